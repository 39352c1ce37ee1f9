"""The techniques as plain PyTorch (no Lightning): each piece works on a bare ``nn.Module``."""

from effdl_lightning.core.distill import (
    AttentionTransferLoss,
    DistillationLoss,
    FeatureCapture,
    FitNetsLoss,
    KDLoss,
)
from effdl_lightning.core.lowrank import (
    LowRankConfig,
    LowRankResult,
    add_nuclear_norm_gradient_,
    apply_low_rank_entry,
    factorize_jaderberg,
    factorize_jaderberg_data,
    factorize_svd,
    factorize_zhang,
    factorize_zhang_asymmetric,
    low_rank_,
)
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
    "AttentionTransferLoss",
    "DistillationLoss",
    "FeatureCapture",
    "FitNetsLoss",
    "KDLoss",
    "LowRankConfig",
    "LowRankResult",
    "SharedWeight",
    "add_nuclear_norm_gradient_",
    "apply_low_rank_entry",
    "cluster_gradient_",
    "factorize_jaderberg",
    "factorize_jaderberg_data",
    "factorize_svd",
    "factorize_zhang",
    "factorize_zhang_asymmetric",
    "kmeans_1d",
    "low_rank_",
    "select_modules",
    "share_weights_",
    "snap_",
]
