"""LightningDataModules: offline datasets (MNIST subset, digits, MNIST-1D) and real-format loaders.

Every datamodule serves float32 channels-first inputs and int64 labels, and exposes ``input_shape`` and
``num_classes`` right after construction. Heavy imports (scikit-learn, mnist1d, PIL) happen in ``setup``.
"""

from effdl_lightning.data.base import ArrayDataModule, ArraySplits, stratified_split
from effdl_lightning.data.cifar10 import CIFAR10DataModule
from effdl_lightning.data.digits import DigitsDataModule
from effdl_lightning.data.image_folder import ImageFolderDataModule
from effdl_lightning.data.mnist1d import MNIST1DDataModule
from effdl_lightning.data.mnist_idx import MNISTIDXDataModule, read_idx
from effdl_lightning.data.mnist_subset import MNISTSubsetDataModule
from effdl_lightning.data.registry import create_datamodule, list_datamodules

__all__ = [
    "ArrayDataModule",
    "ArraySplits",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "MNISTIDXDataModule",
    "MNISTSubsetDataModule",
    "create_datamodule",
    "list_datamodules",
    "read_idx",
    "stratified_split",
]
