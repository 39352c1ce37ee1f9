"""Filter pruning plans (Li et al., arXiv 1608.08710) on top of :mod:`effdl_lightning.core.surgery`.

A *plan* is ``{group name: atom indices to remove}`` for :meth:`ChannelGraph.cut`. :func:`filter_pruning_plan`
removes a ratio of each group's channels (one global ratio, or per-layer ratios by glob pattern) with the
lowest filter norm (``l1`` as in Li et al., ``l2``) or at random (the control); :func:`prune_to_budget`
finds the one ratio that brings a cost (MACs or parameters, measured by the caller's function) to a target
fraction of the model's, by bisection on actual cuts of a copy of the model.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from effdl_lightning.core.surgery import ChannelCut, ChannelGraph, ChannelGroup, SurgeryError, apply_cut

__all__ = ["CRITERIA", "budget_ratio", "filter_pruning_plan", "group_ratio", "prune_to_budget"]

CRITERIA = ("l1", "l2", "random")


def group_ratio(group: ChannelGroup, ratio: float, layer_ratios: Mapping[str, float] | None) -> float:
    """The ratio for ``group``: the first ``layer_ratios`` pattern matching its name or a producer, else ``ratio``."""
    for pattern, value in (layer_ratios or {}).items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in (group.name, *group.producers)):
            return float(value)
    return float(ratio)


def filter_pruning_plan(
    graph: ChannelGraph,
    ratio: float,
    layer_ratios: Mapping[str, float] | None = None,
    criterion: str = "l1",
    generator: torch.Generator | None = None,
    min_channels: int = 1,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Per group, the ``floor(ratio · prunable atoms)`` atoms with the smallest filter norm.

    In a group with frozen atoms (e.g. a residual stream fed by zero padding) the ratio applies to the
    removable atoms; no layer is left with fewer than ``min_channels`` channels.

    Args:
        graph: the model's channel graph.
        ratio: fraction of each group's channels to remove, in ``[0, 1)``.
        layer_ratios: ``{glob pattern on a group's name or producer: ratio}`` overriding ``ratio``.
        criterion: ``l1`` / ``l2`` filter norm (summed over coupled producers) or ``random``.
        generator: the random criterion's generator (seed it identically on every rank).
        min_channels: channels every group keeps at least.
        round_to: round each group's kept channel count to a multiple of this (at least one multiple; groups
            narrower than it are left whole). CPU conv kernels work in blocks of 8 channels (oneDNN, ONNX
            Runtime's MLAS): widths of 22 or 58 pay for 24 or 64, and ``round_to=8`` is what turns halved
            MACs into a measured speedup on those runtimes (``benchmarks/results/structured_pruning.md``).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    plan: dict[str, list[int]] = {}
    for group in graph.groups:
        r = group_ratio(group, ratio, layer_ratios)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"ratio for group {group.name!r} must be in [0, 1), got {r}")
        prunable = group.prunable
        n = math.floor(r * len(prunable) + 1e-9)
        if round_to > 1 and n > 0:
            if group.size < round_to:
                continue
            kept = max(round_to, round((group.size - n) / round_to) * round_to)
            n = min(max(group.size - kept, 0), len(prunable))
        if n <= 0:
            continue
        if criterion == "random":
            order = [prunable[i] for i in torch.randperm(len(prunable), generator=generator).tolist()]
        else:
            score = graph.importance(group, criterion)[prunable]
            order = [prunable[i] for i in torch.argsort(score, stable=True).tolist()]
        # every layer touching the group keeps at least `min_channels` of its channels
        left = {key: len(atoms) for key, atoms in graph.member_atoms(group).items()}
        where = graph.atom_members(group)
        chosen: list[int] = []
        for atom in order:
            if len(chosen) == n:
                break
            if all(left[key] - 1 >= min_channels for key in where[atom]):
                chosen.append(atom)
                for key in where[atom]:
                    left[key] -= 1
        if not chosen:
            continue
        plan[group.name] = sorted(chosen)
    return plan


def budget_ratio(
    graph: ChannelGraph,
    cost: Callable[[nn.Module], float],
    goal: float,
    criterion: str = "l1",
    layer_ratios: Mapping[str, float] | None = None,
    seed: int = 0,
    min_channels: int = 1,
    max_ratio: float = 0.95,
    iterations: int = 14,
    round_to: int = 1,
) -> float:
    """The smallest common ratio (to ``1/2**iterations``) whose cut brings ``cost`` to ≤ ``goal``.

    ``cost`` is any measure of a model (MACs or parameters at the caller's input size); every candidate is
    an actual cut of a copy of ``graph.model``. ``layer_ratios`` stay fixed.

    Raises:
        SurgeryError: even ``max_ratio`` does not reach the goal (too much of the model is frozen).
    """

    def plan_at(r: float) -> dict[str, list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return filter_pruning_plan(graph, r, layer_ratios, criterion, gen, min_channels, round_to)

    def cost_at(r: float) -> float:
        trial = copy.deepcopy(graph.model)
        apply_cut(trial, graph.plan(plan_at(r)))
        return cost(trial)

    if cost_at(0.0) <= goal:
        return 0.0
    reached = cost_at(max_ratio)
    if reached > goal:
        raise SurgeryError(
            f"removing {max_ratio:.0%} of every prunable group leaves a cost of {reached:,.0f}, above the "
            f"target {goal:,.0f}; kept groups: "
            + "; ".join(f"{g.name}: {g.reason}" for g in graph.groups if g.reason)
        )
    lo, hi = 0.0, max_ratio
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if cost_at(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi


def prune_to_budget(
    model: nn.Module,
    example_input: Tensor | Sequence[int],
    cost: Callable[[nn.Module], float],
    target: float,
    criterion: str = "l1",
    layer_ratios: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
    generator_seed: int = 0,
    max_ratio: float = 0.95,
    iterations: int = 14,
    round_to: int = 1,
) -> tuple[ChannelCut, float]:
    """Cut ``model`` in place with the smallest common ratio whose ``cost`` is ≤ ``target`` × the model's.

    Returns the cut and the ratio (:func:`budget_ratio`; ``layer_ratios`` fix some groups' ratios and the
    rest share the searched one).

    Raises:
        SurgeryError: even ``max_ratio`` does not reach the target (too much of the model is frozen).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    graph = ChannelGraph(model, example_input, exclude=exclude)
    ratio = budget_ratio(
        graph,
        cost,
        target * cost(model),
        criterion,
        layer_ratios,
        generator_seed,
        1,
        max_ratio,
        iterations,
        round_to,
    )
    gen = torch.Generator().manual_seed(generator_seed)
    return graph.cut(filter_pruning_plan(graph, ratio, layer_ratios, criterion, gen, 1, round_to)), ratio
