"""Per-layer pruning sensitivity (Li et al., "Pruning Filters for Efficient ConvNets", arXiv 1608.08710, §4.1).

Li et al. prune each layer *independently* (every other layer intact) by an increasing fraction of its
filters, smallest L1 norm first, and evaluate the network without retraining: layers whose accuracy stays
flat are *insensitive* and can be pruned hard, the others lightly or not at all (their Fig. 2(b), 3, 6). Here
a "layer" is a :class:`~effdl_lightning.core.surgery.ChannelGroup`: the channels that must be removed
together (for a plain conv its filters; for a residual stream every conv adding into it).

:func:`sensitivity_analysis` returns one row per (group, ratio), ratio 0 (the unpruned model, evaluated
once) first in each curve; :func:`sensitivity_table` renders them as Markdown and :func:`plot_sensitivity`
as a PNG with one curve per group (matplotlib is imported only when plotting).
"""

from __future__ import annotations

import copy
import glob
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.structured import CRITERIA, filter_pruning_plan
from effdl_lightning.core.surgery import ChannelGraph, ChannelGroup, apply_cut

__all__ = ["DEFAULT_RATIOS", "plot_sensitivity", "sensitivity_analysis", "sensitivity_table"]

#: pruned fraction of a group's filters, as in Li et al.'s sensitivity plots (arXiv 1608.08710, Fig. 2(b))
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_VALUES = ("accuracy", "macs_fraction", "params_fraction", "removed", "kept")


def conv_linear_macs(model: nn.Module, example: Tensor) -> int:
    """MACs of the conv and linear layers at ``example`` per sample (shared/BENCHMARKS.md definition).

    conv: ``Cin/groups · Cout · kh · kw · Hout · Wout``; linear: ``in · out`` per output row. Norms,
    activations and pooling are not counted (as in :func:`effdl_lightning.measure.profile`).
    """
    total = 0

    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, _CONVS):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += per_output * output[0].numel()
        elif isinstance(module, nn.Linear):
            total += module.in_features * output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def _select_groups(graph: ChannelGraph, groups: Iterable[str] | None) -> list[ChannelGroup]:
    prunable = [g for g in graph.groups if g.prunable]
    if groups is None:
        return prunable
    by_name = {g.name: g for g in graph.groups}
    for g in graph.groups:
        for producer in g.producers:
            by_name.setdefault(producer, g)
    known = [g.name for g in prunable]
    chosen: list[ChannelGroup] = []
    for name in groups:
        if name not in by_name:
            raise ValueError(f"unknown channel group {name!r}; known prunable groups: {known}")
        group = by_name[name]
        if not group.prunable:
            raise ValueError(
                f"channel group {group.name!r} cannot be pruned ({group.reason}); known prunable groups: {known}"
            )
        if group not in chosen:
            chosen.append(group)
    return chosen


def sensitivity_analysis(
    model: nn.Module,
    input_shape: Sequence[int] | Tensor,
    evaluate: Callable[[nn.Module], float],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    groups: Iterable[str] | None = None,
    cost: Callable[[nn.Module], float] | None = None,
    exclude: Iterable[str] = (),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Prune one channel group at a time by each ratio, evaluate without retraining (Li et al., §4.1).

    For every selected group and every ratio ``r`` a deep copy of ``model`` loses the ``floor(r · prunable
    channels)`` filters of *that group only* with the lowest ``criterion`` score (coupled layers lose the
    same channels, every other group is intact), and ``evaluate(copy)`` scores it. ``model`` is never
    changed. Each curve starts with ratio 0: the unpruned model, evaluated once and shared by all curves.

    Args:
        model: the trained model (traceable by ``torch.fx``).
        input_shape: the input shape without batch (or an example batch) for tracing and counting MACs.
        evaluate: scores a model, e.g. test accuracy; it receives the pruned copy with ``model``'s
            training flag and should put it in eval mode itself.
        ratios: fractions of each group's prunable channels to remove, each in ``[0, 1)``.
        criterion: ``"l1"`` (Li et al.), ``"l2"`` or ``"random"`` (the control; seeded by ``seed``).
        groups: group names (a group's name or any of its producers') to analyse; ``None``: every prunable
            group, in graph order.
        cost: MACs of a model; default :func:`conv_linear_macs` at ``input_shape``.
        exclude: layers whose outputs are never pruned (see :class:`ChannelGraph`).
        seed: seed of the random criterion's generator.

    Returns:
        One dict per (group, ratio): ``group``, ``producers``, ``channels`` (group size), ``ratio``,
        ``removed``, ``kept``, ``accuracy`` (what ``evaluate`` returned), ``macs``, ``macs_fraction``,
        ``params``, ``params_fraction`` (all parameters, relative to the unpruned model).

    Raises:
        ValueError: a bad criterion or ratio, or a group name that is unknown or not prunable (the message
            lists the known prunable groups).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    bad = [r for r in ratios if not 0.0 <= float(r) < 1.0]
    if bad or not ratios:
        raise ValueError(f"ratios must be a non-empty sequence of values in [0, 1), got {list(ratios)}")
    graph = ChannelGraph(model, input_shape, exclude=exclude)
    selected = _select_groups(graph, groups)
    measure = cost or (lambda m: conv_linear_macs(m, graph.example))
    base_macs = float(measure(model))
    base_params = sum(p.numel() for p in model.parameters())
    base_score = float(evaluate(copy.deepcopy(model)))
    grid = sorted({0.0, *(float(r) for r in ratios)})
    rows: list[dict[str, Any]] = []
    for group in selected:
        pattern = glob.escape(group.name)
        for r in grid:
            generator = torch.Generator().manual_seed(seed)
            plan = filter_pruning_plan(graph, 0.0, {pattern: r}, criterion, generator)
            removed = plan.get(group.name, [])
            if removed:
                pruned = copy.deepcopy(model)
                apply_cut(pruned, graph.plan({group.name: removed}))
                score, macs = float(evaluate(pruned)), float(measure(pruned))
                params = sum(p.numel() for p in pruned.parameters())
            else:
                score, macs, params = base_score, base_macs, base_params
            rows.append(
                {
                    "group": group.name,
                    "producers": list(group.producers),
                    "channels": group.size,
                    "ratio": r,
                    "removed": len(removed),
                    "kept": group.size - len(removed),
                    "accuracy": score,
                    "macs": macs,
                    "macs_fraction": macs / base_macs if base_macs else math.nan,
                    "params": params,
                    "params_fraction": params / base_params if base_params else math.nan,
                }
            )
    return rows


def _curves(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        curves.setdefault(row["group"], []).append(row)
    return curves


def sensitivity_table(rows: Sequence[dict[str, Any]], value: str = "accuracy", fmt: str = "{:.4f}") -> str:
    """Markdown: one line per group (name, channels), one column per ratio, cells ``fmt.format(row[value])``.

    ``value`` is one of ``accuracy``, ``macs_fraction``, ``params_fraction``, ``removed``, ``kept``.
    """
    if value not in _VALUES:
        raise ValueError(f"value must be one of {_VALUES}, got {value!r}")
    curves = _curves(rows)
    ratios = sorted({row["ratio"] for row in rows})
    lines = [
        "| group | channels | " + " | ".join(f"{r:g}" for r in ratios) + " |",
        "|---|---:|" + "---:|" * len(ratios),
    ]
    for name, curve in curves.items():
        at = {row["ratio"]: row for row in curve}
        cells = [fmt.format(at[r][value]) if r in at else "" for r in ratios]
        lines.append(f"| {name} | {curve[0]['channels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sensitivity(
    rows: Sequence[dict[str, Any]],
    path: str | Path | None = None,
    title: str | None = None,
    ylabel: str = "accuracy",
    ax: Any = None,
) -> Path | None:
    """Plot ``accuracy`` against the pruned ratio, one curve per group (Li et al., Fig. 2(b)).

    Draws on the matplotlib axes ``ax`` when given (e.g. a panel of a larger figure), else on a new figure
    that is written to ``path`` as a PNG and closed. Returns ``path``.
    """
    if ax is None and path is None:
        raise ValueError("plot_sensitivity needs a path to write or an axes to draw on")
    from matplotlib.figure import Figure  # lazy: the core does not need matplotlib

    figure = None
    if ax is None:  # a figure outside pyplot: no backend or global state is touched
        figure = Figure(figsize=(7, 4.5))
        ax = figure.subplots()
    curves = _curves(rows)
    styles = ["-", "--", ":", "-."]
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(
            [r["ratio"] for r in curve],
            [r["accuracy"] for r in curve],
            styles[(i // 10) % len(styles)],
            marker="o",
            ms=3,
            label=f"{name} ({curve[0]['channels']})",
        )
    ax.set(xlabel="fraction of the group's filters pruned (smallest first)", ylabel=ylabel)
    ax.set_title(title or "Pruning sensitivity per channel group, no retraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(curves) > 12 else 1, loc="lower left")
    if figure is None or path is None:
        return Path(path) if path is not None else None
    figure.tight_layout()
    figure.savefig(str(path), dpi=120)
    return Path(path)
