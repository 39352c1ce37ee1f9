"""Parameters, nonzeros, MACs, storage and latency of a model (definitions: shared/BENCHMARKS.md).

* **Parameters** are all of ``model.parameters()`` (weights, biases, norm layers), each shared tensor
  counted once. Nonzeros count the weights as the model computes with them: for a module pruned with
  ``torch.nn.utils.prune`` (``weight_orig`` and ``weight_mask``) the masked ``weight`` is counted.
* **MACs** are the multiply-accumulates of one forward pass at batch 1, counted by forward hooks:
  convolution (1-D/2-D/3-D) ``Cin/groups · Cout · prod(kernel) · prod(output spatial)``; transposed
  convolution ``Cin · Cout/groups · prod(kernel) · prod(input spatial)`` (the kernel slides over the input,
  as in ``torch.utils.flop_counter``); linear ``in · out`` per row (times the leading dims beyond batch,
  e.g. tokens); bilinear ``in1 · in2 · out``; multi-head attention its input and output projections only.
  Bias, normalization, activation, pooling, elementwise ops, attention's matmuls and functional calls
  inside ``forward`` are not counted. A module called twice in one forward counts twice. Other layer types
  add a rule with :func:`register_macs_rule`.
* **Effective MACs** scale each layer's MACs by the nonzero fraction of its weights (tensors with two or
  more dimensions).
* **Size** is the byte length of ``torch.save(model.state_dict())``.
"""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from effdl_lightning.measure.latency import eval_mode, measure_latency, model_device_dtype, num_threads

log = logging.getLogger(__name__)

MacsRule = Callable[[nn.Module, tuple[Any, ...], Any], int]
"""``rule(module, inputs, output) -> MACs`` of one call of ``module`` at batch 1."""

_MACS_RULES: dict[type[nn.Module], MacsRule] = {}
_ZERO_MAC_WEIGHTED = (nn.Embedding, nn.EmbeddingBag)


def register_macs_rule(module_type: type[nn.Module], fn: MacsRule) -> None:
    """Count the MACs of ``module_type`` (and its subclasses) with ``fn(module, inputs, output) -> int``.

    ``fn`` gets the module, the positional inputs and the output of one call at batch 1. A module whose
    type has a rule is measured as a unit: the rule covers everything its submodules compute, and they are
    not hooked separately. Registering a type again replaces its rule.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"module_type must be a subclass of nn.Module; got {module_type!r}")
    _MACS_RULES[module_type] = fn


def _rule_for(module: nn.Module) -> MacsRule | None:
    for cls in type(module).__mro__:
        if cls in _MACS_RULES:
            return _MACS_RULES[cls]
    return None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _conv_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    assert isinstance(module, nn.modules.conv._ConvNd)
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        x = _first_tensor(inputs)
        assert x is not None
        return x.numel() * (module.out_channels // module.groups) * kernel
    return _first_tensor(output).numel() * (module.in_channels // module.groups) * kernel  # type: ignore[union-attr]


def _linear_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    assert isinstance(module, nn.Linear)
    return _first_tensor(output).numel() * module.in_features  # type: ignore[union-attr]


def _bilinear_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    assert isinstance(module, nn.Bilinear)
    return _first_tensor(output).numel() * module.in1_features * module.in2_features  # type: ignore[union-attr]


def _attention_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    assert isinstance(module, nn.MultiheadAttention)
    tensors = [t for t in inputs[:3] if isinstance(t, torch.Tensor)]
    out = _first_tensor(output)
    assert out is not None
    query_rows = out.numel() // module.embed_dim  # inputs passed by keyword do not reach the hook
    rows = [query_rows] + [t.numel() // t.shape[-1] for t in tensors[1:]]
    rows += [rows[-1]] * (3 - len(rows))
    return (
        rows[0] * module.embed_dim * module.embed_dim
        + rows[1] * module.kdim * module.embed_dim
        + rows[2] * module.vdim * module.embed_dim
        + rows[0] * module.embed_dim * module.embed_dim
    )


for _type, _rule in (
    (nn.modules.conv._ConvNd, _conv_macs),
    (nn.Linear, _linear_macs),
    (nn.Bilinear, _bilinear_macs),
    (nn.MultiheadAttention, _attention_macs),
):
    register_macs_rule(_type, _rule)


def _effective_tensors(module: nn.Module, recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters as the module computes with them (masked ``weight`` for ``torch.nn.utils.prune``)."""
    for owner_name, owner in module.named_modules() if recurse else [("", module)]:
        for name, param in owner.named_parameters(recurse=False):
            tensor: Any = param
            if name.endswith("_orig") and isinstance(
                getattr(owner, name[: -len("_orig")], None), torch.Tensor
            ):
                tensor = getattr(owner, name[: -len("_orig")])
            yield (f"{owner_name}.{name}" if owner_name else name), tensor


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(all, nonzero)`` parameter counts; shared parameters count once (see the module docstring)."""
    total = nonzero = 0
    seen: set[int] = set()
    for owner in model.modules():
        for name, param in owner.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            total += param.numel()
            tensor = dict(_effective_tensors(owner, recurse=False))[name]
            nonzero += int(torch.count_nonzero(tensor.detach()))
    return total, nonzero


def state_dict_bytes(model: nn.Module) -> int:
    """Byte length of ``torch.save(model.state_dict())`` written to memory."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _weight_density(module: nn.Module) -> float:
    weights = [t for _, t in _effective_tensors(module) if t.dim() >= 2]
    total = sum(t.numel() for t in weights)
    if total == 0:
        return 1.0
    return sum(int(torch.count_nonzero(t.detach())) for t in weights) / total


@dataclass
class LayerProfile:
    """One measured module: a leaf module, or a module whose type has a MACs rule (with its children).

    ``params``/``params_nonzero`` count the module's own parameters (children included for a rule unit);
    ``macs``/``effective_macs`` sum over its ``calls`` in one forward pass; ``output_shape`` is the shape
    of its (first tensor) output at batch 1 in the last call, batch dimension included.
    """

    name: str
    type: str
    params: int
    params_nonzero: int
    macs: int
    effective_macs: float
    output_shape: tuple[int, ...]
    calls: int = 1


@dataclass
class ModelProfile:
    """Cost of one model at one input size; definitions in the module docstring and shared/BENCHMARKS.md.

    ``latency_ms`` maps batch size to the median wall-clock ms and ``latency_spread_ms`` to its
    ``(p25, p75)`` quartiles; both are empty when latency was not measured.
    """

    input_shape: tuple[int, ...]
    params: int
    params_nonzero: int
    macs: int
    effective_macs: float
    size_bytes: int
    latency_ms: dict[int, float]
    latency_spread_ms: dict[int, tuple[float, float]]
    threads: int
    runtime: str
    layers: list[LayerProfile] = field(default_factory=list)
    device: str = "cpu"

    @property
    def sparsity(self) -> float:
        """``1 - nonzero / params`` (0 for a model without parameters)."""
        return 1.0 - self.params_nonzero / self.params if self.params else 0.0

    @property
    def compression_ratio(self) -> float:
        """``params / nonzero`` (BENCHMARKS.md); ``inf`` when every parameter is zero."""
        return self.params / self.params_nonzero if self.params_nonzero else math.inf

    def as_metrics(self, prefix: str = "compress/") -> dict[str, float]:
        """Scalars for a logger: counts, ratios, size, and ``latency_ms_b<batch>`` for each measured batch."""
        metrics = {
            "params": float(self.params),
            "params_nonzero": float(self.params_nonzero),
            "sparsity": self.sparsity,
            "compression_ratio": self.compression_ratio,
            "macs": float(self.macs),
            "effective_macs": float(self.effective_macs),
            "size_bytes": float(self.size_bytes),
        }
        metrics.update({f"latency_ms_b{batch}": ms for batch, ms in self.latency_ms.items()})
        return {prefix + key: value for key, value in metrics.items()}

    def to_table(self) -> str:
        """A plain-text per-layer table with totals, definitions and latency."""
        header = ("layer", "type", "params", "nonzero", "MACs", "eff. MACs", "output")
        rows = [
            (
                layer.name + (f" (x{layer.calls})" if layer.calls > 1 else ""),
                layer.type,
                f"{layer.params:,}",
                f"{layer.params_nonzero:,}",
                f"{layer.macs:,}",
                f"{layer.effective_macs:,.0f}",
                "x".join(str(d) for d in layer.output_shape),
            )
            for layer in self.layers
        ]
        outside = self.params - sum(layer.params for layer in self.layers)
        if outside > 0:
            rows.append(("(parameters outside listed layers)", "", f"{outside:,}", "", "", "", ""))
        totals = (
            "total",
            "",
            f"{self.params:,}",
            f"{self.params_nonzero:,}",
            f"{self.macs:,}",
            f"{self.effective_macs:,.0f}",
            "",
        )
        widths = [max(len(row[i]) for row in [header, *rows, totals]) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(header))
        out = [
            f"input {tuple(self.input_shape)} at batch 1; MACs: conv and linear only, no bias "
            f"(norm/activation/pool/elementwise excluded); runtime {self.runtime} on {self.device}, "
            f"{self.threads} threads",
            line(header),
            rule,
            *(line(row) for row in rows),
            rule,
            line(totals),
            f"sparsity {self.sparsity:.4f}, compression ratio {self.compression_ratio:.2f}x, "
            f"state_dict {self.size_bytes:,} bytes",
        ]
        out += [
            f"latency batch {batch}: median {ms:.3f} ms (p25 {self.latency_spread_ms[batch][0]:.3f}, "
            f"p75 {self.latency_spread_ms[batch][1]:.3f})"
            for batch, ms in self.latency_ms.items()
        ]
        return "\n".join(out)


def _measured_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a MACs rule (taken whole) and the leaves outside them, in registration order."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(prefix: str, module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        children = list(module.named_children())
        if _rule_for(module) is not None or not children:
            found.append((prefix, module))
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def _count_macs(model: nn.Module, input_shape: Sequence[int]) -> list[LayerProfile]:
    device, dtype = model_device_dtype(model)
    modules = _measured_modules(model)
    stats: dict[int, LayerProfile] = {}
    order: list[int] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        rule = _rule_for(module)
        macs = int(rule(module, inputs, output)) if rule is not None else 0
        tensor = _first_tensor(output)
        shape = tuple(tensor.shape) if tensor is not None else ()
        key = id(module)
        if key in stats:
            stats[key].macs += macs
            stats[key].calls += 1
            stats[key].output_shape = shape
        else:
            stats[key] = LayerProfile(names[key], type(module).__name__, 0, 0, macs, 0.0, shape)
            order.append(key)

    names = {id(module): name or type(module).__name__ for name, module in modules}
    handles = [module.register_forward_hook(hook) for _, module in modules]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.randn(1, *input_shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    by_id = {id(module): module for _, module in modules}
    for key in order:
        module, layer = by_id[key], stats[key]
        layer.params, layer.params_nonzero = count_parameters(module)
        layer.effective_macs = layer.macs * _weight_density(module)
        unknown = layer.macs == 0 and _rule_for(module) is None and not isinstance(module, _ZERO_MAC_WEIGHTED)
        if unknown and any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            log.warning(
                "profile: no MACs rule for %s (%s), counted as 0 MACs; add one with register_macs_rule",
                layer.name,
                layer.type,
            )
    return [stats[key] for key in order]


def profile(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    latency: bool = True,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
    device: str | torch.device | None = None,
) -> ModelProfile:
    """Measure ``model`` at ``input_shape`` (no batch dimension) without changing it.

    One forward pass at batch 1 in eval mode under ``torch.no_grad()`` counts MACs through forward hooks
    (removed afterwards); latency (optional) is :func:`measure_latency`. Each module's training flag is
    restored; gradients are not touched.

    Args:
        model: any module taking one tensor ``(batch, *input_shape)``.
        input_shape: input without the batch dimension, e.g. ``(1, 28, 28)``.
        latency: also time the forward pass at ``batch_sizes``.
        batch_sizes: batch sizes to time.
        warmup: untimed runs before timing each batch size.
        repeats: timed runs per batch size (median and quartiles reported).
        threads: torch intra-op threads for the whole measurement (restored afterwards); ``None`` keeps
            the current setting.
        device: where to measure; if it differs from the model's device a copy of the model is moved
            there. ``None`` uses the model's device.
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be a non-empty list of positive sizes; got {tuple(input_shape)}")
    target = model
    if device is not None and torch.device(device) != model_device_dtype(model)[0]:
        target = copy.deepcopy(model).to(device)
    params, nonzero = count_parameters(target)
    with num_threads(threads) as used_threads:
        layers = _count_macs(target, shape)
        timings = (
            measure_latency(target, shape, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats)
            if latency
            else {}
        )
    return ModelProfile(
        input_shape=shape,
        params=params,
        params_nonzero=nonzero,
        macs=sum(layer.macs for layer in layers),
        effective_macs=sum(layer.effective_macs for layer in layers),
        size_bytes=state_dict_bytes(target),
        latency_ms={batch: median for batch, (median, _, _) in timings.items()},
        latency_spread_ms={batch: (p25, p75) for batch, (_, p25, p75) in timings.items()},
        threads=used_threads,
        runtime="eager",
        layers=layers,
        device=str(model_device_dtype(target)[0]),
    )
