"""The techniques as plain PyTorch (no Lightning): each piece works on a bare ``nn.Module``."""

from effdl_lightning.core.selection import DEFAULT_LAYER_TYPES, select_modules
from effdl_lightning.core.weight_sharing import (
    PRUNED,
    SHARING_INITS,
    SharedWeight,
    cluster_gradient_,
    kmeans_1d,
    share_weights_,
    snap_,
)

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "PRUNED",
    "SHARING_INITS",
    "SharedWeight",
    "cluster_gradient_",
    "kmeans_1d",
    "select_modules",
    "share_weights_",
    "snap_",
]
