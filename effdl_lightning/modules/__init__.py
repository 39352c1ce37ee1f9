"""LightningModules that define the training objective."""

from effdl_lightning.modules.classification import ClassificationModule
from effdl_lightning.modules.darts_search import DartsSearchModule
from effdl_lightning.modules.distillation import DistillationModule
from effdl_lightning.modules.early_exit import EarlyExitModule
from effdl_lightning.modules.skipnet import SkipNetModule

__all__ = [
    "ClassificationModule",
    "DartsSearchModule",
    "DistillationModule",
    "EarlyExitModule",
    "SkipNetModule",
]
