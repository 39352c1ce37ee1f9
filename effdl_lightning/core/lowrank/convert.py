"""Factorize a whole model in place: choose layers and ranks, fit the factors, return the record entry.

:func:`low_rank_` is the model-level entry point (``quantize_``'s twin): it selects ``nn.Linear`` and ``nn.Conv2d``
layers by glob patterns, runs the calibration batches once through the model (shapes, MACs, and the responses'
moments for Zhang's methods), selects each layer's rank (:mod:`effdl_lightning.core.lowrank.rank`), and replaces the
layers in forward order by their factors (:mod:`effdl_lightning.core.lowrank.factorize`). Layers are visited in
forward order so that the data-driven fits of a layer see the inputs of the network approximated so far
(``jaderberg_data``'s inputs, ``zhang_asymmetric``'s ``x̂``), as in Zhang et al. (arXiv 1505.06798, §3.3).

A layer that cannot or should not be factorized is left alone with its reason in :attr:`LowRankResult.skipped` (and
logged): a grouped conv, a subclass (e.g. a quantized twin), a layer type without a method, a layer the batches do
not reach, a rank whose factors would cost at least the layer's MACs, or a layer the MAC budget leaves dense.

:func:`add_nuclear_norm_gradient_` adds ``λ·∂‖W‖_*/∂W = λ·UVᵀ`` to the weights' gradients, the (sub)gradient of the
low-rank regularizer ``λ Σ_l ‖W_l‖_*`` taken on the matrix each layer's method truncates.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from effdl_lightning.core.lowrank.factorize import (
    CONV_METHODS,
    LINEAR_METHODS,
    SPATIAL_METHODS,
    factorize_jaderberg,
    factorize_jaderberg_data,
    factorize_svd,
    factorize_zhang,
    factorize_zhang_asymmetric,
    layer_spec,
    matrix_to_weight,
    max_rank,
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
from effdl_lightning.core.lowrank.statistics import (
    LayerProbe,
    as_batches,
    layer_inputs,
    paired_responses,
    probe,
)
from effdl_lightning.core.selection import select_modules

__all__ = [
    "METHOD_PRESETS",
    "LowRankConfig",
    "LowRankLayer",
    "LowRankResult",
    "add_nuclear_norm_gradient_",
    "low_rank_",
    "low_rank_candidates",
]

log = logging.getLogger(__name__)

#: ``method`` strings and the (linear, conv) methods they stand for
METHOD_PRESETS: dict[str, tuple[str | None, str | None]] = {
    "svd": ("svd", "svd"),
    "jaderberg": (None, "jaderberg"),
    "jaderberg_data": (None, "jaderberg_data"),
    "zhang": ("zhang", "zhang"),
    "zhang_asymmetric": ("zhang_asymmetric", "zhang_asymmetric"),
}
_ZHANG = ("zhang", "zhang_asymmetric")


@dataclass
class LowRankConfig:
    """Which factorization per layer type, and how ranks are chosen (validated on construction).

    Rank rule: ``rank``, ``energy`` or ``mac_budget`` (at most one) replaces the default ``rank_ratio``.

    Attributes:
        linear: method for ``nn.Linear`` layers (:data:`LINEAR_METHODS`), ``None`` = leave them alone.
        conv: method for ``nn.Conv2d`` layers (:data:`CONV_METHODS`), ``None`` = leave them alone.
        rank: the same rank for every layer (capped at each layer's full rank).
        rank_ratio: rank = ``round(ratio · full rank)``, in ``(0, 1]``.
        energy: the smallest rank keeping this fraction of the spectrum's energy, in ``(0, 1]``.
        mac_budget: fraction of the model's conv + linear MACs to keep, in ``(0, 1]``, ranks by Zhang's greedy.
        round_to: keep every rank on a multiple of this (1: any rank; 8 or 16 match CPU kernels' channel blocks;
            :func:`~effdl_lightning.core.lowrank.rank.round_rank`).
        data_steps: L-BFGS iterations of ``jaderberg_data``.
    """

    linear: str | None = "svd"
    conv: str | None = "svd"
    rank: int | None = None
    rank_ratio: float | None = 0.25
    energy: float | None = None
    mac_budget: float | None = None
    round_to: int = 1
    data_steps: int = 25

    def __post_init__(self) -> None:
        if self.linear is not None and self.linear not in LINEAR_METHODS:
            raise ValueError(f"linear method {self.linear!r} is not one of {LINEAR_METHODS} or None")
        if self.conv is not None and self.conv not in CONV_METHODS:
            raise ValueError(f"conv method {self.conv!r} is not one of {CONV_METHODS} or None")
        if self.linear is None and self.conv is None:
            raise ValueError("no method: give a method for linear layers, convs, or both")
        rules = [n for n in ("rank", "energy", "mac_budget") if getattr(self, n) is not None]
        if len(rules) > 1:
            raise ValueError(
                f"give at most one of rank, energy, mac_budget (each replaces rank_ratio), got {rules}"
            )
        if not rules and self.rank_ratio is None:
            raise ValueError("no rank rule: give rank, rank_ratio, energy or mac_budget")
        if self.rank is not None and (
            isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1
        ):
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        for name in ("rank_ratio", "energy", "mac_budget"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if isinstance(self.round_to, bool) or int(self.round_to) != self.round_to or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        if self.data_steps < 0:
            raise ValueError(f"data_steps must be >= 0, got {self.data_steps!r}")

    @classmethod
    def from_method(cls, method: str | Mapping[str, str | None], **kwargs: Any) -> LowRankConfig:
        """``method`` as a preset name (:data:`METHOD_PRESETS`) or ``{"linear": ..., "conv": ...}``."""
        if isinstance(method, str):
            if method not in METHOD_PRESETS:
                raise ValueError(
                    f"unknown low-rank method {method!r}; allowed: {tuple(METHOD_PRESETS)} or a mapping "
                    "{'linear': ..., 'conv': ...}"
                )
            linear, conv = METHOD_PRESETS[method]
        elif isinstance(method, Mapping):
            unknown = sorted(set(method) - {"linear", "conv"})
            if unknown:
                raise ValueError(f"method keys must be 'linear' and/or 'conv', got {unknown}")
            linear, conv = method.get("linear"), method.get("conv")
        else:
            raise ValueError(f"method must be a string or a mapping, got {type(method).__name__}")
        return cls(linear=linear, conv=conv, **kwargs)

    def method_for(self, layer: nn.Module) -> str | None:
        return self.linear if isinstance(layer, nn.Linear) else self.conv


@dataclass
class LowRankLayer:
    """One factorized layer: method, rank, full rank, energy kept, MACs per forward pass at batch 1."""

    name: str
    method: str
    rank: int
    full_rank: int
    energy: float
    macs: float
    macs_factorized: float


@dataclass
class LowRankResult:
    """What :func:`low_rank_` did: the record entry, the layers, the skipped layers and the model's MACs."""

    entry: dict[str, Any]
    layers: list[LowRankLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    macs_before: float = 0.0
    macs_after: float = 0.0


def low_rank_candidates(
    model: nn.Module,
    config: LowRankConfig,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> tuple[dict[str, tuple[nn.Module, str]], dict[str, str]]:
    """``({name: (layer, method)}, {name: why skipped})`` for the layers the patterns and methods select.

    Raises:
        ValueError: a pattern that matches no linear or conv layer, or an empty selection.
    """
    selected = select_modules(model, include, exclude, layer_types=(nn.Linear, nn.Conv2d))
    chosen: dict[str, tuple[nn.Module, str]] = {}
    skipped: dict[str, str] = {}
    for name, layer in selected.items():
        method = config.method_for(layer)
        kind = "Linear" if isinstance(layer, nn.Linear) else "Conv2d"
        if type(layer) not in (nn.Linear, nn.Conv2d):
            skipped[name] = f"a subclass of nn.{kind} ({type(layer).__name__}) is not factorized"
        elif method is None:
            skipped[name] = f"no method for nn.{kind} layers"
        elif isinstance(layer, nn.Conv2d) and layer.groups != 1:
            skipped[name] = f"grouped conv (groups={layer.groups}): the factorizations need groups=1"
        else:
            chosen[name] = (layer, method)
    return chosen, skipped


def _macs_per_rank(layer: nn.Module, method: str, info: LayerProbe) -> float:
    total = 0.0
    for in_shape, out_shape in info.shapes:
        if isinstance(layer, nn.Linear):
            total += math.prod(out_shape) / layer.out_features * (layer.in_features + layer.out_features)
            continue
        n, c, kh, kw = cast(Tensor, layer.weight).shape
        ho, wo = out_shape[-2:]
        if method in SPATIAL_METHODS:  # vertical conv: every input column; horizontal: the output positions
            total += c * kh * ho * in_shape[-1] + n * kw * ho * wo
        else:
            total += (c * kh * kw + n) * ho * wo
    return total


def _spectrum(layer: nn.Module, method: str, info: LayerProbe) -> torch.Tensor:
    if method in _ZHANG:
        assert info.stats is not None
        return torch.linalg.eigvalsh(info.stats.covariance()).flip(0).clamp_min(0)[: max_rank(layer, method)]
    matrix = weight_matrix(layer, method).detach().double()
    return torch.linalg.svdvals(matrix).pow(2)


def _choose_ranks(
    config: LowRankConfig, costs: Mapping[str, LayerCost], total: float
) -> tuple[dict[str, int | None], str]:
    if config.mac_budget is not None:
        fixed = total - sum(c.macs for c in costs.values())
        budgeted = select_ranks_for_budget(costs, config.mac_budget * total, fixed, config.round_to)
        return budgeted, "left dense by the MAC budget"
    ranks: dict[str, int | None] = {}
    q = config.round_to
    for name, cost in costs.items():
        if config.rank is not None:
            ranks[name] = round_rank(int(config.rank), cost.full_rank, q)
        elif config.energy is not None:
            ranks[name] = round_rank(
                rank_for_energy(cost.spectrum, config.energy), cost.full_rank, q, up=True
            )
        else:
            assert config.rank_ratio is not None
            ranks[name] = round_rank(rank_for_ratio(cost.full_rank, config.rank_ratio), cost.full_rank, q)
    return ranks, ""


def low_rank_(
    model: nn.Module,
    batches: Iterable[Any],
    config: LowRankConfig | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> LowRankResult:
    """Replace the selected layers of ``model`` by their low-rank factors, in place.

    Args:
        model: any module whose forward takes one tensor.
        batches: calibration batches (tensors or ``(input, ...)`` tuples). The weight-only methods use them for the
            layers' shapes and MACs; ``zhang*`` and ``jaderberg_data`` also fit on them.
        config: methods and rank rule (default: ``svd`` everywhere at a quarter of the full rank).
        include: glob patterns on layer names to factorize (default: every linear and conv).
        exclude: glob patterns on layer names to leave alone.

    Returns:
        The ``kind="low_rank"`` record entry (``{"layers": {name: spec}}``), the factorized layers, the skipped ones
        with their reasons, and the model's conv + linear MACs before and after.

    Raises:
        ValueError: a pattern that matches nothing, no batch, or an unreachable MAC budget.
    """
    config = config or LowRankConfig()
    chosen, skipped = low_rank_candidates(model, config, include, exclude)
    weight = next(iter(model.parameters()))
    inputs = as_batches(batches, weight.device, weight.dtype)
    zhang = [n for n, (_, m) in chosen.items() if m in _ZHANG]
    original = copy.deepcopy(model) if any(m == "zhang_asymmetric" for _, m in chosen.values()) else None
    probes = probe(model, inputs, zhang)
    total = sum(p.macs for p in probes.values())
    costs: dict[str, LayerCost] = {}
    for name, (layer, method) in chosen.items():
        if name not in probes:
            skipped[name] = "not called on the calibration batches"
            continue
        spectrum = _spectrum(layer, method, probes[name])
        costs[name] = LayerCost(spectrum, probes[name].macs, _macs_per_rank(layer, method, probes[name]))
    ranks, why_dense = _choose_ranks(config, costs, total)
    plan: list[tuple[str, int]] = []
    for name, rank in ranks.items():
        cost = costs[name]
        if rank is None:
            skipped[name] = why_dense
        elif rank * cost.macs_per_rank >= cost.macs:
            skipped[name] = (
                f"rank {rank} costs {rank * cost.macs_per_rank:,.0f} MACs, not fewer than the layer's {cost.macs:,.0f}"
            )
        else:
            plan.append((name, rank))
    plan.sort(key=lambda item: probes[item[0]].order)
    result = LowRankResult({"kind": "low_rank", "layers": {}}, skipped=skipped, macs_before=total)
    saved = 0.0
    for name, rank in plan:
        module, method = chosen[name]
        layer = cast("nn.Linear | nn.Conv2d", module)
        info = probes[name]
        if method == "svd":
            factors = factorize_svd(layer, rank)
        elif method == "jaderberg":
            factors = factorize_jaderberg(cast(nn.Conv2d, layer), rank)
        elif method == "jaderberg_data":
            xs = layer_inputs(model, name, inputs, info.calls)
            factors = factorize_jaderberg_data(cast(nn.Conv2d, layer), rank, xs, config.data_steps)
        elif method == "zhang":
            assert info.stats is not None
            factors = factorize_zhang(layer, rank, info.stats.mean, info.stats.covariance())
        else:
            assert original is not None
            stats = paired_responses(model, original, name, inputs, info.calls)
            factors = factorize_zhang_asymmetric(
                layer, rank, stats.mean, stats.mean_approx, stats.cross(), stats.covariance_approx()
            )
        result.entry["layers"][name] = layer_spec(layer, method, rank)
        _set_module(model, name, factors)
        cost = costs[name]
        saved += cost.macs - rank * cost.macs_per_rank
        result.layers.append(
            LowRankLayer(
                name,
                method,
                rank,
                cost.full_rank,
                energy_kept(cost.spectrum, rank),
                cost.macs,
                rank * cost.macs_per_rank,
            )
        )
    for name, reason in skipped.items():
        log.info("low_rank_: %s left as is: %s", name, reason)
    result.macs_after = total - saved
    return result


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def add_nuclear_norm_gradient_(layers: Mapping[str, tuple[nn.Module, str]], weight: float) -> float:
    """Add ``weight · UVᵀ`` (the subgradient of ``weight · ‖W‖_*``) to each layer's weight gradient.

    ``W`` is the matrix the layer's method truncates (``[C·kh, N·kw]`` for Jaderberg's methods, ``[N, C·kh·kw]``
    otherwise), so the penalty pushes exactly the spectrum the conversion will cut. Calling this after the backward
    pass equals adding ``weight · Σ_l ‖W_l‖_*`` to the loss. Returns ``Σ_l ‖W_l‖_*`` (before the step).
    """
    total = 0.0
    for layer, method in layers.values():
        view = "jaderberg" if method in SPATIAL_METHODS else "svd"
        matrix = weight_matrix(layer, view).detach()
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        total += float(s.sum())
        param = cast(Tensor, layer.weight)
        if weight > 0 and param.requires_grad:
            grad = matrix_to_weight((u @ vh).to(param.dtype), layer, view) * weight
            if param.grad is None:
                param.grad = grad.contiguous()
            else:
                param.grad.add_(grad)
    return total
