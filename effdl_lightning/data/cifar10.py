"""CIFAR-10 (Krizhevsky, 2009) read from the "python version" pickle batches."""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from effdl_lightning.data.base import ArrayDataModule, ArraySplits
from effdl_lightning.data.download import download_first, missing_files_error
from effdl_lightning.data.transforms import RandomHorizontalFlip, RandomTranslate

#: per-channel mean and std of the 50,000 training images scaled to [0, 1] (computed over all pixels;
#: the often-quoted std (0.2023, 0.1994, 0.2010) is a mean of per-image stds, see kuangliu/pytorch-cifar#19)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch: ``b"data"`` (N×3072 uint8, channel-major) -> ``(N, 3, 32, 32)``, ``b"labels"``."""
    with open(path, "rb") as stream:
        batch: dict[bytes, Any] = pickle.load(stream, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape}, expected (N, 3072) / (N,)")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images ``(3, 32, 32)`` of 10 classes.

    Source: ``cifar-10-python.tar.gz`` of www.cs.toronto.edu/~kriz/cifar.html, i.e. the pickle files
    ``data_batch_1..5``, ``test_batch`` and ``batches.meta``, looked up in ``data_dir`` and then
    ``data_dir/cifar-10-batches-py``. The official test split is kept; validation is carved from train,
    stratified. Augmentation is the standard random crop with 4-px padding plus horizontal flip.

    Args:
        data_dir: folder of the batches (or of ``cifar-10-batches-py``).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the train/val split and of the shuffling.
        augment: random 4-px translation and horizontal flip of training images.
        val_fraction: fraction of the training images used for validation.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`.
        download: fetch and extract the archive (MD5-checked) into ``data_dir`` when files are missing.
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    mean = CIFAR10_MEAN
    std = CIFAR10_STD
    max_shift = 4
    mirrors: ClassVar[list[str]] = ["https://www.cs.toronto.edu/~kriz/"]
    archive: ClassVar[tuple[str, str]] = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data/",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        val_fraction: float = 0.1,
        pin_memory: bool = False,
        normalize: bool = True,
        download: bool = False,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, seed, augment, val_fraction, None, pin_memory, normalize
        )
        self.download = bool(download)
        self.input_shape = (3, 32, 32)
        self.num_classes = 10
        #: class names from ``batches.meta`` (set by ``setup``)
        self.classes: list[str] | None = None
        self._check_declared(input_shape, num_classes)

    def _augmentations(self, fill: Sequence[float]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [RandomTranslate(self.max_shift, fill), RandomHorizontalFlip(0.5)]

    def _folder(self) -> tuple[Path | None, list[str]]:
        """The first folder holding every file, or ``None`` and the files missing from ``data_dir``."""
        candidates = [Path(self.data_dir), Path(self.data_dir, CIFAR10_FOLDER)]
        for folder in candidates:
            if all((folder / name).is_file() for name in CIFAR10_FILES):
                return folder, []
        best = max(candidates, key=lambda f: sum((f / n).is_file() for n in CIFAR10_FILES))
        return None, [name for name in CIFAR10_FILES if not (best / name).is_file()]

    def _locate(self) -> Path:
        folder, missing = self._folder()
        error: BaseException | None = None
        if folder is None and self.download:
            name, md5 = self.archive
            try:
                download_first(self.mirrors, name, self.data_dir, md5)
                with tarfile.open(Path(self.data_dir, name), "r:gz") as tar:
                    if hasattr(tarfile, "data_filter"):  # refuses absolute paths and links out of the folder
                        tar.extractall(self.data_dir, filter="data")
                    else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
                        tar.extractall(self.data_dir)
            except (OSError, tarfile.TarError) as err:
                error = err
            folder, missing = self._folder()
        if folder is None:
            raise missing_files_error(
                type(self).__name__, missing, self.data_dir, [Path(self.data_dir, CIFAR10_FOLDER)], error
            )
        return folder

    def prepare_data(self) -> None:
        """Download and extract (rank 0 only, before ``setup``) when ``download`` is on."""
        if self.download:
            self._locate()

    def _load_arrays(self) -> ArraySplits:
        folder = self._locate()
        with open(folder / "batches.meta", "rb") as stream:
            meta: dict[bytes, Any] = pickle.load(stream, encoding="bytes")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{folder / 'batches.meta'}: {len(self.classes)} label names, expected 10")
        train = [read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
        x_test, y_test = read_cifar_batch(folder / "test_batch")
        x_train = np.concatenate([x for x, _ in train])
        return ArraySplits(
            x_train=x_train.astype(np.float32) / 255.0,
            y_train=np.concatenate([y for _, y in train]),
            x_test=x_test.astype(np.float32) / 255.0,
            y_test=y_test,
        )
