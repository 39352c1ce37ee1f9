"""LightningModules that define the training objective."""

from effdl_lightning.modules.classification import ClassificationModule
from effdl_lightning.modules.distillation import DistillationModule

__all__ = ["ClassificationModule", "DistillationModule"]
