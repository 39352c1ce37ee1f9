"""Rank selection: explicit rank, rank ratio, energy threshold, and Zhang et al.'s greedy whole-model selection.

Each candidate layer has a *spectrum* ``e_1 ≥ e_2 ≥ … ≥ 0``: the squared singular values of the matrix the weight
methods truncate (``svd``, ``jaderberg*``: the Frobenius energy of the weights), or the eigenvalues of the
responses' covariance (``zhang*``: the PCA energy of the responses). ``E(r) = Σ_{i≤r} e_i / Σ_i e_i`` is the energy
kept at rank ``r``.

* ``rank``: the same ``r`` for every layer (capped at the layer's full rank).
* ``rank_ratio``: ``r = max(1, round(ratio · full rank))``.
* ``energy``: the smallest ``r`` with ``E(r) ≥ energy``.
* ``mac_budget``: Zhang, Zou, He & Sun 2015 (arXiv 1505.06798, §3.4): maximize ``Π_l E_l(r_l)`` subject to the
  model's MACs ``≤ budget``. Greedy: all layers start dense; each step removes, in the layer with the smallest
  ratio ``Δlog E / ΔMACs``, its smallest kept eigenvalue (the first step of a layer jumps from dense to the largest
  rank that costs fewer MACs than the dense layer), until the budget holds. Zhang writes the complexity of a layer
  as ``(r/d)·C_l``; here it is the factors' exact MACs, ``r`` times the MACs per rank unit.

``round_to = q`` (every rule) keeps ranks on multiples of ``q`` (at least ``q``, at most the full rank): CPU
conv/GEMM kernels work on blocks of 8 or 16 channels, so a rank of 7 or 79 runs about as slowly as 8 or 80 and
the MACs it saves are not seen in wall-clock time. Ratio and explicit ranks go to the nearest multiple, energy
ranks up to the next one (the energy is still reached), and the greedy removes ``q`` eigenvalues per step.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LayerCost",
    "energy_kept",
    "rank_for_energy",
    "rank_for_ratio",
    "round_rank",
    "select_ranks_for_budget",
]


def _check_round_to(round_to: int) -> int:
    if isinstance(round_to, bool) or int(round_to) != round_to or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
    return int(round_to)


def round_rank(rank: int, full_rank: int, round_to: int = 1, up: bool = False) -> int:
    """``rank`` on a multiple of ``round_to`` (the nearest, or the next with ``up``), in ``[round_to, full_rank]``.

    The full rank is returned when it is smaller than ``round_to`` or than the rounded rank.
    """
    q = _check_round_to(round_to)
    if q == 1:
        return max(1, min(full_rank, rank))
    steps = -(-rank // q) if up else max(1, round(rank / q))
    return min(full_rank, max(q, q * steps))


def rank_for_ratio(full_rank: int, ratio: float) -> int:
    """``max(1, round(ratio · full_rank))``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank_ratio must be in (0, 1], got {ratio!r}")
    return max(1, min(full_rank, round(ratio * full_rank)))


def _cumulative(spectrum: Tensor) -> Tensor:
    """``E(r)`` for ``r = 1..len(spectrum)`` (all ones for an all-zero spectrum)."""
    values = spectrum.detach().double().clamp_min(0).sort(descending=True).values
    total = float(values.sum())
    if total <= 0:
        return torch.ones_like(values)
    return values.cumsum(0) / total


def rank_for_energy(spectrum: Tensor, energy: float) -> int:
    """The smallest ``r`` whose kept energy ``E(r)`` reaches ``energy`` (in ``(0, 1]``)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    kept = _cumulative(spectrum)
    reached = (kept >= energy - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else len(kept)


def energy_kept(spectrum: Tensor, rank: int) -> float:
    """``E(rank)``."""
    return float(_cumulative(spectrum)[rank - 1])


@dataclass
class LayerCost:
    """What the budgeted selection knows of one candidate layer.

    Attributes:
        spectrum: energies ``e_i`` (any order; sorted inside).
        macs: MACs of the dense layer per forward pass at batch 1.
        macs_per_rank: MACs of its factors per unit of rank (the factors cost ``r · macs_per_rank``).
    """

    spectrum: Tensor
    macs: float
    macs_per_rank: float

    @property
    def full_rank(self) -> int:
        return len(self.spectrum)

    @property
    def break_even(self) -> int:
        """The largest rank whose factors cost fewer MACs than the dense layer (0: none)."""
        if self.macs_per_rank <= 0:
            return self.full_rank
        return min(self.full_rank, math.ceil(self.macs / self.macs_per_rank) - 1)

    def largest_rank(self, round_to: int = 1) -> int:
        """The largest multiple of ``round_to`` whose factors cost fewer MACs than the dense layer (0: none)."""
        return self.break_even // round_to * round_to


def select_ranks_for_budget(
    layers: Mapping[str, LayerCost], budget: float, fixed_macs: float = 0.0, round_to: int = 1
) -> dict[str, int | None]:
    """Zhang et al.'s greedy selection: ranks whose MACs (plus ``fixed_macs``) fit ``budget``; ``None`` = dense.

    With ``round_to = q`` every rank is a multiple of ``q`` and a step removes ``q`` eigenvalues at once (a layer
    whose break-even rank is below ``q`` stays dense).

    Raises:
        ValueError: when even the smallest rank everywhere exceeds the budget.
    """
    q = _check_round_to(round_to)
    kept = {n: _cumulative(c.spectrum) for n, c in layers.items()}
    ranks: dict[str, int | None] = {n: None for n in layers}
    total = fixed_macs + sum(c.macs for c in layers.values())
    heap: list[tuple[float, int, str]] = []
    order = {n: i for i, n in enumerate(layers)}

    def push(name: str) -> None:
        cost, r = layers[name], ranks[name]
        if r is None:
            target = cost.largest_rank(q)
            if target < 1:
                return
            gain = cost.macs - target * cost.macs_per_rank
            loss = -math.log(max(float(kept[name][target - 1]), 1e-300))
        elif r > q:
            gain = q * cost.macs_per_rank
            loss = math.log(max(float(kept[name][r - 1]), 1e-300)) - math.log(
                max(float(kept[name][r - 1 - q]), 1e-300)
            )
        else:
            return
        heapq.heappush(heap, (loss / gain if gain > 0 else math.inf, order[name], name))

    for name in layers:
        push(name)
    while total > budget and heap:
        _, _, name = heapq.heappop(heap)
        cost, r = layers[name], ranks[name]
        if r is None:
            ranks[name] = cost.largest_rank(q)
            total -= cost.macs - cost.largest_rank(q) * cost.macs_per_rank
        else:
            ranks[name] = r - q
            total -= q * cost.macs_per_rank
        push(name)
    if total > budget * (1 + 1e-9):
        raise ValueError(
            f"the MAC budget of {budget:,.0f} cannot be reached: with every candidate layer at rank {q} the model "
            f"still has {total:,.0f} MACs"
        )
    return ranks
