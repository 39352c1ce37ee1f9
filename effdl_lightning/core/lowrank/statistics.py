"""What the data-driven factorizations read from calibration batches: shapes, MACs, response moments, inputs.

Plain forward hooks on a model in eval mode under ``torch.no_grad()``; nothing stays registered afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerProbe",
    "ResponseStatistics",
    "as_batches",
    "as_rows",
    "dense_macs",
    "layer_inputs",
    "paired_responses",
    "probe",
]


def as_rows(t: Tensor, conv: bool) -> Tensor:
    """Responses as ``[samples, channels]``: every position of a conv map and every row of a linear is a sample."""
    if conv:
        return t.movedim(1, -1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


class ResponseStatistics:
    """Running moments (float64) of a layer's responses ``y`` and, for the asymmetric fit, of ``ŷ`` and ``y ŷᵀ``."""

    def __init__(
        self, channels: int, asymmetric: bool = False, conv: bool = True, device: torch.device | None = None
    ) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.count = 0
        self.asymmetric = asymmetric
        self.conv = conv
        self.sum_y, self.yy = zeros(channels), zeros(channels, channels)
        self.sum_h = zeros(channels) if asymmetric else self.sum_y
        self.hh = zeros(channels, channels) if asymmetric else self.yy
        self.yh = zeros(channels, channels) if asymmetric else self.yy

    def update(self, y: Tensor, y_hat: Tensor | None = None) -> None:
        """Add responses ``y`` (and, when asymmetric, ``ŷ`` of the same samples)."""
        ry = as_rows(y.detach(), self.conv).to(self.yy)
        self.count += ry.shape[0]
        self.sum_y += ry.sum(0)
        self.yy += ry.T @ ry
        if self.asymmetric:
            if y_hat is None:
                raise ValueError("asymmetric statistics need y_hat with y")
            rh = as_rows(y_hat.detach(), self.conv).to(self.yy)
            if rh.shape != ry.shape:
                raise ValueError(f"y_hat rows {tuple(rh.shape)} do not match y rows {tuple(ry.shape)}")
            self.sum_h += rh.sum(0)
            self.hh += rh.T @ rh
            self.yh += ry.T @ rh

    def _need(self) -> int:
        if self.count == 0:
            raise ValueError("no responses were recorded")
        return self.count

    @property
    def mean(self) -> Tensor:
        return self.sum_y / self._need()

    @property
    def mean_approx(self) -> Tensor:
        return self.sum_h / self._need()

    def covariance(self) -> Tensor:
        """``E[(y − ȳ)(y − ȳ)ᵀ]``."""
        return self.yy / self._need() - torch.outer(self.mean, self.mean)

    def covariance_approx(self) -> Tensor:
        """``E[(ŷ − ȳ̂)(ŷ − ȳ̂)ᵀ]``."""
        return self.hh / self._need() - torch.outer(self.mean_approx, self.mean_approx)

    def cross(self) -> Tensor:
        """``E[(y − ȳ)(ŷ − ȳ̂)ᵀ]``."""
        return self.yh / self._need() - torch.outer(self.mean, self.mean_approx)


def as_batches(batches: Iterable[Any], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    """The input tensor of each batch (a tensor, the first item of a tuple/list, or the first value of a dict)."""
    out = []
    for batch in batches:
        x = batch
        if isinstance(batch, Mapping):
            x = next(iter(batch.values()))
        elif isinstance(batch, (tuple, list)):
            x = batch[0]
        if not isinstance(x, Tensor):
            raise ValueError(f"a batch must be a tensor or a (tensor, ...) tuple, got {type(x).__name__}")
        out.append(x.to(device, dtype) if x.is_floating_point() else x.to(device))
    if not out:
        raise ValueError("no calibration batch: low-rank factorization needs at least one input batch")
    return out


def dense_macs(module: nn.Module, input_shape: Sequence[int], output_shape: Sequence[int]) -> float:
    """MACs of one call at batch 1 of a conv (1-3-D, not transposed) or linear; 0 for anything else."""
    out = math.prod(output_shape)
    if isinstance(module, nn.Linear):
        return float(out * module.in_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return float(out * module.in_channels // module.groups * math.prod(module.kernel_size))
    return 0.0


@dataclass
class LayerProbe:
    """One layer seen on the calibration batches.

    Attributes:
        order: position of its first call in the forward pass.
        calls: calls per forward pass.
        shapes: ``(input shape, output shape)`` without batch, per call.
        macs: MACs per forward pass at batch 1.
        stats: response moments in this model (only for the layers asked for).
    """

    order: int
    calls: int = 0
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    macs: float = 0.0
    stats: ResponseStatistics | None = None


def probe(
    model: nn.Module, batches: Sequence[Tensor], stats_for: Iterable[str] = ()
) -> dict[str, LayerProbe]:
    """Run ``batches`` through ``model``; shapes and MACs of every conv and linear, moments of ``stats_for``."""
    wanted = set(stats_for)
    layers = {
        n: m
        for n, m in model.named_modules()
        if n and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    }
    found: dict[str, LayerProbe] = {}
    first = [True]

    def hook(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, Tensor) or not args or not isinstance(args[0], Tensor):
            return
        info = found.setdefault(name, LayerProbe(order=len(found)))
        if first[0]:
            shapes = (tuple(args[0].shape[1:]), tuple(output.shape[1:]))
            info.calls += 1
            info.shapes.append(shapes)
            info.macs += dense_macs(module, *shapes)
        if name in wanted:
            if info.stats is None:
                conv = not isinstance(module, nn.Linear)
                channels = output.shape[1 if conv else -1]
                info.stats = ResponseStatistics(channels, conv=conv, device=output.device)
            info.stats.update(output)

    handles = [m.register_forward_hook(lambda m, a, o, n=n: hook(n, m, a, o)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                first[0] = False
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the sampled layer has run."""


def _run_until(model: nn.Module, name: str, batches: Sequence[Tensor], stop: bool, grab: Any) -> None:
    module = model.get_submodule(name)

    def hook(m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        grab(args[0].detach(), output.detach())
        if stop:
            raise _Stop

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Stop):
                    model(batch)
    finally:
        model.train(was_training)
        handle.remove()


def layer_inputs(model: nn.Module, name: str, batches: Sequence[Tensor], calls: int = 1) -> list[Tensor]:
    """The inputs of layer ``name`` in ``model`` on ``batches`` (a forward stops at a layer called once)."""
    seen: list[Tensor] = []
    _run_until(model, name, batches, calls == 1, lambda x, y: seen.append(x))
    return seen


def paired_responses(
    model: nn.Module, original: nn.Module, name: str, batches: Sequence[Tensor], calls: int = 1
) -> ResponseStatistics:
    """Moments of ``y`` (layer ``name`` in ``original``) against ``ŷ`` (the same layer in ``model``), per batch."""
    stats: ResponseStatistics | None = None
    conv = not isinstance(model.get_submodule(name), nn.Linear)
    for batch in batches:
        ys: list[Tensor] = []
        hs: list[Tensor] = []
        _run_until(original, name, [batch], calls == 1, lambda x, y, out=ys: out.append(y))
        _run_until(model, name, [batch], calls == 1, lambda x, y, out=hs: out.append(y))
        if len(ys) != len(hs):
            raise RuntimeError(f"layer {name!r} ran {len(hs)} times in the model, {len(ys)} in the original")
        for y, h in zip(ys, hs, strict=True):
            if stats is None:
                channels = y.shape[1 if conv else -1]
                stats = ResponseStatistics(channels, asymmetric=True, conv=conv, device=y.device)
            stats.update(y, h)
    if stats is None:
        raise ValueError(f"layer {name!r} did not run on the calibration batches")
    return stats
