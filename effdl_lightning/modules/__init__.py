"""LightningModules that define the training objective."""

from effdl_lightning.modules.classification import ClassificationModule

__all__ = ["ClassificationModule"]
