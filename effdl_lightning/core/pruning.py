"""Unstructured pruning as plain PyTorch: sparsity schedules, importance scores, masks.

Masks are boolean tensors (True = kept) shaped like their parameter. They are applied to weights, gradients
and optimizer state around the optimizer step — never through a forward hook and never with a second copy
of the weights — so that pruning costs a few element-wise products per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("cubic", "linear", "one_shot", "iterative")
SCOPES = ("global", "layer")
CRITERIA = ("magnitude", "random")


@dataclass(frozen=True)
class PruningSchedule:
    """When to prune and to which sparsity (Zhu & Gupta 2017, arXiv 1710.01878, eq. 1).

    Pruning events happen at steps ``start, start + frequency, …`` and at ``end``. At an event ``t`` the
    target sparsity is, for ``kind="cubic"``::

        s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start)) ** 3

    ``"linear"`` ramps linearly from ``s_i`` to ``s_f``; ``"one_shot"`` prunes to ``s_f`` in one event at
    ``start``; ``"iterative"`` (Han et al. 2015, arXiv 1506.02626) ramps the quality factor ``q`` of the
    threshold ``q·std(W)`` linearly over the events, so the fraction returned is the ramp position in
    ``(0, 1]``. Outside ``[start, end]`` there is no event; after ``end`` masks are frozen.

    Args:
        kind: one of ``cubic``, ``linear``, ``one_shot``, ``iterative``.
        start: first pruning step.
        end: last pruning step (``>= start``).
        frequency: steps between events (Δt; ≥ 1).
        initial_sparsity: ``s_i``.
        final_sparsity: ``s_f``.
    """

    kind: str
    start: int
    end: int
    frequency: int
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if self.start < 0:
            raise ValueError(f"the pruning start must be >= 0, got {self.start}")
        if self.end < self.start:
            raise ValueError(f"the pruning end ({self.end}) is before its start ({self.start})")
        if self.frequency < 1:
            raise ValueError(f"the pruning frequency must be >= 1 step, got {self.frequency}")
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) exceeds final_sparsity ({self.final_sparsity})"
            )

    def events(self) -> list[int]:
        """All event steps, in order."""
        if self.kind == "one_shot":
            return [self.start]
        return sorted({*range(self.start, self.end + 1, self.frequency), self.end})

    def is_event(self, step: int) -> bool:
        """Whether ``step`` is a pruning event."""
        if self.kind == "one_shot":
            return step == self.start
        return self.start <= step <= self.end and (
            (step - self.start) % self.frequency == 0 or step == self.end
        )

    def progress(self, step: int) -> float:
        """Fraction of the schedule elapsed at ``step``, clamped to ``[0, 1]``."""
        if self.kind == "one_shot" or self.end == self.start:
            return 1.0 if step >= self.start else 0.0
        return min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)

    def fraction(self, step: int) -> float:
        """How far the schedule's shape has gone at ``step``, in ``[0, 1]`` (0 before ``start``).

        ``cubic``: ``1 - (1 - p)**3``; ``linear``: ``p``; ``one_shot``: 1 from ``start``; ``iterative``: the
        share of events done. ``p`` is the elapsed fraction of ``[start, end]``.
        """
        if step < self.start:
            return 0.0
        if self.kind == "iterative":
            events = self.events()
            return sum(1 for t in events if t <= step) / len(events)
        p = self.progress(step)
        if self.kind == "cubic":
            return 1.0 - (1.0 - p) ** 3
        if self.kind == "linear":
            return p
        return 1.0  # one_shot

    def sparsity(self, step: int, final: float | None = None) -> float:
        """Target sparsity at ``step``: ``s_i + (s_f - s_i)·fraction(step)``, optionally for another ``s_f``.

        For ``cubic`` this is Zhu & Gupta's ``s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))**3``.
        """
        s_f = self.final_sparsity if final is None else final
        s_i = min(self.initial_sparsity, s_f)
        return s_i + (s_f - s_i) * self.fraction(step)


def importance(weight: Tensor, criterion: str, generator: torch.Generator | None = None) -> Tensor:
    """Score each element: ``|w|`` for ``magnitude``; uniform noise for ``random`` (the control)."""
    if criterion == "magnitude":
        return weight.detach().abs().float()
    if criterion == "random":
        return torch.rand(weight.shape, generator=generator, device="cpu").to(weight.device)
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def _keep_top(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean mask keeping all but the ``n_prune`` lowest scores (exact count; ties broken by position)."""
    flat = scores.reshape(-1)
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        mask[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    return mask.view_as(scores)


def magnitude_masks(
    weights: Mapping[str, Tensor],
    sparsity: float | Mapping[str, float],
    scope: str = "layer",
    criterion: str = "magnitude",
    current: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Masks that prune each tensor (``scope="layer"``) or the pool of all (``"global"``) to ``sparsity``.

    Already pruned elements (``current`` False) stay pruned: their score is ``-inf``, so they are counted
    first and never grow back (masks only shrink, as in Zhu & Gupta).

    Args:
        weights: ``{name: tensor}`` to prune.
        sparsity: fraction of elements to remove; a mapping gives each tensor its own (``scope="layer"``).
        scope: ``"layer"`` (each tensor separately) or ``"global"`` (one threshold over all tensors).
        criterion: ``"magnitude"`` or ``"random"``.
        current: the masks so far.
        generator: the random generator of the ``random`` criterion (seed it identically on every rank).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    scores: dict[str, Tensor] = {}
    for name, w in weights.items():
        s = importance(w, criterion, generator)
        if current is not None and name in current:
            s = s.masked_fill(~current[name].to(s.device), float("-inf"))
        scores[name] = s
    if scope == "layer" or not isinstance(sparsity, float | int):
        out: dict[str, Tensor] = {}
        for name, s in scores.items():
            target = float(sparsity[name]) if isinstance(sparsity, Mapping) else float(sparsity)
            out[name] = _keep_top(s, round(target * s.numel()))
        return out
    pool = torch.cat([s.reshape(-1).cpu() for s in scores.values()])
    keep = _keep_top(pool, round(float(sparsity) * pool.numel()))
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s).to(s.device)
        offset += s.numel()
    return out


def threshold_masks(
    weights: Mapping[str, Tensor],
    q: Mapping[str, float],
    std: Mapping[str, float],
    current: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Han et al. 2015 (arXiv 1506.02626): keep ``|w| >= q·std`` per layer; pruned elements stay pruned."""
    out: dict[str, Tensor] = {}
    for name, w in weights.items():
        keep = w.detach().abs() >= q[name] * std[name]
        if current is not None and name in current:
            keep &= current[name].to(keep.device)
        out[name] = keep
    return out


@torch.no_grad()
def apply_masks_(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned elements of each parameter in place.

    ``masks`` may be boolean or 0/1 in the parameter's dtype; the latter is several times faster, since a
    boolean mask is converted on every call.
    """
    for name, mask in masks.items():
        params[name].mul_(mask)


@torch.no_grad()
def mask_gradients_(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the gradients of pruned elements in place (parameters without a gradient are skipped)."""
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask)


@torch.no_grad()
def mask_optimizer_state_(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> None:
    """Zero the optimizer state (momentum, Adam moments, …) of pruned elements in place."""
    for name, mask in masks.items():
        state = optimizer.state.get(params[name])  # type: ignore[call-overload]
        if not state:
            continue
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == mask.shape:
                value.mul_(mask)


def sparsity_of(masks: Mapping[str, Tensor]) -> float:
    """Fraction of pruned elements over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def layer_std(weight: Tensor) -> float:
    """Standard deviation of a layer's weights (the scale of Han et al.'s threshold)."""
    value = float(weight.detach().float().std()) if weight.numel() > 1 else 0.0
    return value if math.isfinite(value) else 0.0
