"""Neural architecture search as plain PyTorch: DARTS (search space, architect, genotypes) and the pieces of
the platform-aware search (search space, reward, latency table)."""

from effdl_lightning.core.nas.darts import DartsSearchNetwork, MixedOp, SearchCell, reduction_layers
from effdl_lightning.core.nas.darts_architect import (
    FD_RADIUS,
    first_order_arch_grad_,
    second_order_arch_grad_,
)
from effdl_lightning.core.nas.darts_genotype import (
    DARTS_V2,
    Genotype,
    derive_cell,
    derive_genotype,
    num_edges,
    random_genotype,
)
from effdl_lightning.core.nas.darts_ops import DARTS_OPS, build_op, check_ops
from effdl_lightning.core.nas.latency_table import LatencySettings, LatencyTable
from effdl_lightning.core.nas.mnas import Architecture, SearchSpace, StageChoice, reward

__all__ = [
    "DARTS_OPS",
    "DARTS_V2",
    "FD_RADIUS",
    "Architecture",
    "DartsSearchNetwork",
    "Genotype",
    "LatencySettings",
    "LatencyTable",
    "MixedOp",
    "SearchCell",
    "SearchSpace",
    "StageChoice",
    "build_op",
    "check_ops",
    "derive_cell",
    "derive_genotype",
    "first_order_arch_grad_",
    "num_edges",
    "random_genotype",
    "reduction_layers",
    "reward",
    "second_order_arch_grad_",
]
