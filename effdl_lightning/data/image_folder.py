"""Images in one folder per class (``root/<class>/<image>``), loaded with PIL into memory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from effdl_lightning.data.base import ArrayDataModule, ArraySplits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FOLDERS = ("train", "val", "test")


def class_folders(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (the classes), hidden folders skipped."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) directly inside ``folder``."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderDataModule(ArrayDataModule):
    """Your own images: ``data_dir/<class>/<img>.png|jpg|jpeg|bmp``, or the same under ``train/`` ``val/`` ``test/``.

    Source: the user's folder. When ``data_dir/train`` exists, the ``train``/``val``/``test`` sub-folders
    are the splits (a missing ``test`` or ``val`` is carved from train, stratified); otherwise all images
    are split stratified with ``val_fraction`` / ``test_fraction``. Classes are the sorted folder names
    (of ``train/`` in split mode), label ``i`` = ``classes[i]``. Images are converted to ``"L"``
    (``channels=1``) or ``"RGB"`` (``channels=3``) and resized to ``image_size`` × ``image_size``
    (bilinear). Normalization: per-channel mean and std of the training split.

    ``num_classes`` is known right after construction: the given value (checked against the folder
    in ``setup``), or else counted from the folder listing in ``__init__`` (no image is read there).

    Args:
        data_dir: root folder of the class folders (or of ``train/``, ``val/``, ``test/``).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the split and of the shuffling.
        augment: random translation of training images by up to 2 px.
        val_fraction: fraction used for validation when there is no ``val/`` folder.
        test_fraction: fraction used for test when there is no ``test/`` folder.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize with the training split's statistics.
        image_size: side of the square images after resizing.
        channels: 1 (grayscale) or 3 (RGB).
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data/",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        pin_memory: bool = False,
        normalize: bool = True,
        image_size: int = 32,
        channels: int = 3,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            num_workers,
            seed,
            augment,
            val_fraction,
            test_fraction,
            pin_memory,
            normalize,
        )
        if channels not in (1, 3):
            raise ValueError(f"channels must be one of [1, 3], got {channels}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.mean = (0.0,) * self.channels
        self.std = (1.0,) * self.channels
        self.input_shape = (self.channels, self.image_size, self.image_size)
        #: sorted class names (set from the folder listing)
        self.classes: list[str] | None = None
        if num_classes is None:
            self.classes = self._scan_classes()
            self.num_classes = len(self.classes)
        else:
            self.num_classes = int(num_classes)
        self._check_declared(input_shape, None)

    @property
    def _split_mode(self) -> bool:
        return Path(self.data_dir, "train").is_dir()

    def _scan_classes(self) -> list[str]:
        root = Path(self.data_dir)
        if not root.is_dir():
            raise FileNotFoundError(
                f"ImageFolderDataModule: folder {root} does not exist; set data.data_dir to a folder with "
                "one sub-folder of images per class (optionally inside train/, val/, test/)"
            )
        top = root / "train" if self._split_mode else root
        classes = class_folders(top)
        if not classes:
            raise FileNotFoundError(
                f"ImageFolderDataModule: no class folders in {top}; expected {top}/<class>/<image> with "
                f"extensions {', '.join(IMAGE_EXTENSIONS)}"
            )
        return classes

    def _read_folder(self, top: Path, classes: list[str], required: bool) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image  # imported here to keep `import effdl_lightning.data` cheap

        unknown = sorted(set(class_folders(top)) - set(classes))
        if unknown:
            raise ValueError(f"ImageFolderDataModule: {top} has class folders {unknown} not in {classes}")
        mode = "L" if self.channels == 1 else "RGB"
        images: list[np.ndarray] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            folder = top / name
            for path in image_files(folder) if folder.is_dir() else []:
                with Image.open(path) as file:
                    img = file.convert(mode)
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
                images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
                labels.append(label)
        if not images and required:
            raise FileNotFoundError(
                f"ImageFolderDataModule: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders "
                f"of {top}"
            )
        x = np.stack(images).astype(np.float32) / 255.0 if images else np.zeros((0, *self.input_shape))
        return x.astype(np.float32), np.asarray(labels, dtype=np.int64)

    def _load_arrays(self) -> ArraySplits:
        classes = self._scan_classes()
        if len(classes) != self.num_classes:
            raise ValueError(
                f"ImageFolderDataModule: configured num_classes {self.num_classes} does not match the "
                f"{len(classes)} class folders found in {self.data_dir}: {classes}"
            )
        self.classes = classes
        root = Path(self.data_dir)
        if not self._split_mode:
            x, y = self._read_folder(root, classes, required=True)
            return ArraySplits(x_train=x, y_train=y)
        splits = ArraySplits(*self._read_folder(root / "train", classes, required=True))
        for split in ("val", "test"):
            if (root / split).is_dir():
                x, y = self._read_folder(root / split, classes, required=True)
                setattr(splits, f"x_{split}", x)
                setattr(splits, f"y_{split}", y)
        return splits

    def _normalization_stats(self, x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split (a constant channel gets std 1)."""
        mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
        std[std < 1e-8] = 1.0
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        return self.mean, self.std
