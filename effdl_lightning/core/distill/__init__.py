"""Knowledge distillation as plain PyTorch: loss terms with their formulas, and feature capture by module path.

* :class:`KDLoss` / :func:`kd_loss`: Hinton et al. 2015 (arXiv 1503.02531), soft targets at temperature T.
* :class:`FitNetsLoss` / :func:`hint_loss`: Romero et al. 2015 (arXiv 1412.6550), hints with a regressor.
* :class:`AttentionTransferLoss` / :func:`at_loss`: Zagoruyko & Komodakis 2017 (arXiv 1612.03928).
* :class:`FeatureCapture`: forward hooks on submodules named by path, so no model's ``forward`` is edited.

The Lightning side is ``effdl_lightning.modules.DistillationModule``.
"""

from effdl_lightning.core.distill.base import DistillationInputs, DistillationLoss, parse_pairs
from effdl_lightning.core.distill.capture import FeatureCapture, capture_features, resolve_module
from effdl_lightning.core.distill.features import (
    AttentionTransferLoss,
    FitNetsLoss,
    at_loss,
    attention_map,
    hint_loss,
    make_regressor,
)
from effdl_lightning.core.distill.kd import KDLoss, kd_loss

__all__ = [
    "AttentionTransferLoss",
    "DistillationInputs",
    "DistillationLoss",
    "FeatureCapture",
    "FitNetsLoss",
    "KDLoss",
    "at_loss",
    "attention_map",
    "capture_features",
    "hint_loss",
    "kd_loss",
    "make_regressor",
    "parse_pairs",
    "resolve_module",
]
