"""Common base of the in-memory datamodules: stratified split, normalization, augmentation, loaders.

A subclass only reads its arrays (:meth:`ArrayDataModule._load_arrays`); the base splits them with a
fixed seed, normalizes them with per-channel constants, and serves float32 channels-first tensors
(images ``(N, C, H, W)``, 1-D signals ``(N, 1, L)``) with int64 labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.data.transforms import AugmentCollate, RandomTranslate, normalize


@dataclass
class ArraySplits:
    """Arrays read by a datamodule, before splitting and normalization.

    ``x_*`` are float arrays, channels first, in the data's natural scale (images in ``[0, 1]``);
    ``y_*`` are integer labels. ``x_test is None`` means the source has no official test split (the base
    carves one out, stratified); ``x_val is None`` means validation is carved out of the training arrays.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _allocate(class_sizes: np.ndarray, total: int, capacity: np.ndarray) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``class_sizes`` (largest remainder), within capacity."""
    ideal = class_sizes * (total / class_sizes.sum())
    counts = np.minimum(np.floor(ideal).astype(np.int64), capacity)
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
    while counts.sum() < total:
        progressed = False
        for c in order:
            if counts.sum() == total:
                break
            if counts[c] < capacity[c]:
                counts[c] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot draw {total} samples from {int(capacity.sum())} remaining")
    return counts


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split sample indices into ``len(fractions) + 1`` parts with the same class proportions.

    Part ``k`` holds ``round(len(labels) * fractions[k])`` samples, allocated per class by largest
    remainder; the last part holds the rest. Indices within a part are sorted; the draw is a fixed
    function of ``seed``.

    Args:
        labels: integer class label per sample.
        fractions: fraction of all samples for each leading part; their sum must be below 1.
        seed: seed of the permutation within each class.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    by_class = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    sizes = np.array([len(ix) for ix in by_class], dtype=np.int64)
    taken = np.zeros_like(sizes)
    parts: list[list[np.ndarray]] = []
    for fraction in fractions:
        counts = _allocate(sizes, round(n * fraction), sizes - taken)
        parts.append([ix[t : t + k] for ix, t, k in zip(by_class, taken, counts, strict=True)])
        taken += counts
    parts.append([ix[t:] for ix, t in zip(by_class, taken, strict=True)])
    return [np.sort(np.concatenate(p)) for p in parts]


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` if it lies in the open interval (0, 1), else raise ``ValueError``."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value}")
    return float(value)


class ArrayDataModule(pl.LightningDataModule):
    """Base of the in-memory datamodules (subclasses read the arrays in :meth:`_load_arrays`).

    Subclasses set ``input_shape`` and ``num_classes`` in ``__init__`` and call :meth:`_check_declared`
    with the values given by the config. Loading happens in :meth:`setup` (idempotent).

    Args:
        data_dir: folder holding (or receiving) the dataset files.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes (``persistent_workers`` is on when > 0).
        seed: seed of the stratified split and of the shuffling generator.
        augment: random augmentation of training batches (see :meth:`_augmentations`).
        val_fraction: fraction of the samples split off for validation (of the training split when
            the dataset has an official test split, else of the whole dataset).
        test_fraction: fraction of the whole dataset split off for test; ``None`` when the dataset
            has an official test split.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize inputs with :attr:`mean` / :attr:`std`; ``False`` serves the raw scale.
    """

    #: per-channel normalization constants (subclasses set them and cite their source)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    #: largest random translation in pixels when ``augment`` is on
    max_shift: int = 2
    input_shape: tuple[int, ...]
    num_classes: int

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data/",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float | None = None,
        pin_memory: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        check_fraction("val_fraction", val_fraction)
        if test_fraction is not None:
            check_fraction("test_fraction", test_fraction)
            if val_fraction + test_fraction >= 1.0:
                raise ValueError(
                    f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
                )
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.val_fraction = float(val_fraction)
        self.test_fraction = None if test_fraction is None else float(test_fraction)
        self.pin_memory = bool(pin_memory)
        self.normalize = bool(normalize)
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None
        #: the (mean, std) applied in ``setup`` (``None`` before, or when ``normalize`` is off)
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    # -- subclass interface ---------------------------------------------------------------------------

    def _load_arrays(self) -> ArraySplits:
        """Read the dataset; return float arrays (channels first) and integer labels."""
        raise NotImplementedError

    def _normalization_stats(self, x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) to standardize with; the class constants by default."""
        return self.mean, self.std

    def _augmentations(self, fill: Sequence[float]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Training-batch augmentations: translation by up to :attr:`max_shift` pixels."""
        return [RandomTranslate(self.max_shift, fill)]

    # -- checks ---------------------------------------------------------------------------------------

    def _check_declared(self, input_shape: Sequence[int] | None, num_classes: int | None) -> None:
        """Raise ``ValueError`` when config values disagree with :attr:`input_shape` / :attr:`num_classes`."""
        if input_shape is not None:
            declared = tuple(int(d) for d in input_shape)
            if declared != tuple(self.input_shape):
                raise ValueError(
                    f"{type(self).__name__}: configured input_shape {declared} does not match the data's "
                    f"input_shape {tuple(self.input_shape)}"
                )
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: configured num_classes {int(num_classes)} does not match the "
                f"data's num_classes {self.num_classes}"
            )

    # -- LightningDataModule --------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load, split and normalize all splits once; later calls return at once."""
        if self.train_dataset is not None:
            return
        arrays = self._load_arrays()
        x_train, y_train = arrays.x_train, np.asarray(arrays.y_train, dtype=np.int64)
        x_val, y_val, x_test, y_test = arrays.x_val, arrays.y_val, arrays.x_test, arrays.y_test
        if x_test is None or y_test is None:
            fractions = [self.test_fraction if self.test_fraction is not None else 0.2]
            if x_val is None:
                fractions.append(self.val_fraction)
            ix = stratified_split(y_train, fractions, self.seed)
            x_test, y_test = x_train[ix[0]], y_train[ix[0]]
            if x_val is None:
                x_val, y_val = x_train[ix[1]], y_train[ix[1]]
            x_train, y_train = x_train[ix[-1]], y_train[ix[-1]]
        elif x_val is None or y_val is None:
            val_ix, train_ix = stratified_split(y_train, [self.val_fraction], self.seed)
            x_val, y_val = x_train[val_ix], y_train[val_ix]
            x_train, y_train = x_train[train_ix], y_train[train_ix]
        assert y_val is not None
        for split, x in (("train", x_train), ("val", x_val), ("test", x_test)):
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"{type(self).__name__}: {split} inputs have shape {tuple(x.shape[1:])}, expected "
                    f"input_shape {tuple(self.input_shape)}"
                )
            if len(x) == 0:
                raise ValueError(f"{type(self).__name__}: the {split} split is empty; change the fractions")
        if self.normalize:
            self.normalization = self._normalization_stats(x_train)
        self.train_dataset = self._to_dataset(x_train, y_train)
        self.val_dataset = self._to_dataset(x_val, y_val)
        self.test_dataset = self._to_dataset(x_test, np.asarray(y_test))

    def _to_dataset(self, x: np.ndarray, y: np.ndarray) -> TensorDataset:
        xt = torch.as_tensor(np.ascontiguousarray(x)).to(torch.float32)
        if self.normalization is not None:
            xt = normalize(xt, *self.normalization)
        return TensorDataset(xt, torch.as_tensor(np.asarray(y, dtype=np.int64)))

    def _loader(self, dataset: TensorDataset | None, train: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        collate_fn = None
        if train and self.augment:
            mean, std = self.normalization or ((0.0,) * len(self.mean), (1.0,) * len(self.std))
            fill = [-m / s for m, s in zip(mean, std, strict=True)]  # a black pixel after normalization
            collate_fn = AugmentCollate(self._augmentations(fill))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled (seeded generator), augmented when ``augment`` is on."""
        self.setup()
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation split, in order."""
        self.setup()
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader[Any]:
        """Test split, in order."""
        self.setup()
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        """The test split."""
        return self.test_dataloader()


__all__ = ["ArrayDataModule", "ArraySplits", "check_fraction", "stratified_split"]


class FixedShapeDataModule(ArrayDataModule):
    """An in-memory dataset of one fixed input shape and no official test split (stratified 70/10/20).

    Subclasses set the class attributes :attr:`fixed_input_shape` and :attr:`fixed_num_classes` and
    implement :meth:`_load_arrays`; ``input_shape`` / ``num_classes`` given by a config are checked against
    them.
    """

    fixed_input_shape: tuple[int, ...] = ()
    fixed_num_classes: int = 10

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
        self.input_shape = self.fixed_input_shape
        self.num_classes = self.fixed_num_classes
        self._check_declared(input_shape, num_classes)
