"""Datamodules by name: the names used by ``conf/data/<name>.yaml`` and ``create_datamodule``."""

from __future__ import annotations

from typing import Any

from effdl_lightning.data.base import ArrayDataModule
from effdl_lightning.data.cifar10 import CIFAR10DataModule
from effdl_lightning.data.digits import DigitsDataModule
from effdl_lightning.data.image_folder import ImageFolderDataModule
from effdl_lightning.data.mnist1d import MNIST1DDataModule
from effdl_lightning.data.mnist_idx import MNISTIDXDataModule
from effdl_lightning.data.mnist_subset import MNISTSubsetDataModule

_DATAMODULES: dict[str, type[ArrayDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "digits": DigitsDataModule,
    "image_folder": ImageFolderDataModule,
    "mnist": MNISTSubsetDataModule,
    "mnist1d": MNIST1DDataModule,
    "mnist_idx": MNISTIDXDataModule,
}


def list_datamodules() -> list[str]:
    """Sorted names of the registered datamodules."""
    return sorted(_DATAMODULES)


def create_datamodule(name: str, **kwargs: Any) -> ArrayDataModule:
    """Build the datamodule registered as ``name`` with constructor arguments ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).
    """
    if name not in _DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; known: {', '.join(list_datamodules())}")
    return _DATAMODULES[name](**kwargs)
