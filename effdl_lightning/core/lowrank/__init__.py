"""Low-rank factorization of linear and conv layers (plain PyTorch): SVD, Jaderberg et al., Zhang et al.

* :mod:`~effdl_lightning.core.lowrank.factorize`: one layer → two thin layers, exact at full rank, and the
  ``low_rank`` record entry (plain data) that rebuilds the factors on a freshly built model.
* :mod:`~effdl_lightning.core.lowrank.rank`: rank rules (rank, ratio, energy, Zhang's greedy MAC budget).
* :mod:`~effdl_lightning.core.lowrank.statistics`: shapes, MACs and response moments from calibration batches.
* :mod:`~effdl_lightning.core.lowrank.convert`: :func:`low_rank_`, the whole-model conversion, and the
  nuclear-norm regularizer's gradient.
"""

from effdl_lightning.core.lowrank.convert import (
    METHOD_PRESETS,
    LowRankConfig,
    LowRankLayer,
    LowRankResult,
    add_nuclear_norm_gradient_,
    low_rank_,
    low_rank_candidates,
)
from effdl_lightning.core.lowrank.factorize import (
    CHANNEL_METHODS,
    CONV_METHODS,
    LINEAR_METHODS,
    METHODS,
    SPATIAL_METHODS,
    apply_low_rank_entry,
    build_factors,
    factorize_jaderberg,
    factorize_jaderberg_data,
    factorize_svd,
    factorize_zhang,
    factorize_zhang_asymmetric,
    layer_spec,
    matrix_to_weight,
    max_rank,
    relative_error,
    weight_matrix,
)
from effdl_lightning.core.lowrank.rank import (
    LayerCost,
    energy_kept,
    rank_for_energy,
    rank_for_ratio,
    round_rank,
    select_ranks_for_budget,
)
from effdl_lightning.core.lowrank.statistics import ResponseStatistics

__all__ = [
    "CHANNEL_METHODS",
    "CONV_METHODS",
    "LINEAR_METHODS",
    "METHODS",
    "METHOD_PRESETS",
    "SPATIAL_METHODS",
    "LayerCost",
    "LowRankConfig",
    "LowRankLayer",
    "LowRankResult",
    "ResponseStatistics",
    "add_nuclear_norm_gradient_",
    "apply_low_rank_entry",
    "build_factors",
    "energy_kept",
    "factorize_jaderberg",
    "factorize_jaderberg_data",
    "factorize_svd",
    "factorize_zhang",
    "factorize_zhang_asymmetric",
    "layer_spec",
    "low_rank_",
    "low_rank_candidates",
    "matrix_to_weight",
    "max_rank",
    "rank_for_energy",
    "rank_for_ratio",
    "relative_error",
    "round_rank",
    "select_ranks_for_budget",
    "weight_matrix",
]
