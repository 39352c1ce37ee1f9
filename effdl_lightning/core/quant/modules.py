"""Quantized layers and ``quantize_(model, config)``: fake quantization of any model's convs and linears.

A selected ``nn.Conv1d/2d/3d`` or ``nn.Linear`` is turned *in place* into its quantized twin
(:class:`QuantConv2d`, ...): the same object, the same parameters (so optimizers, masks and parameter names
are untouched), plus up to three fake quantizers as submodules:

* ``weight_quantizer`` applied to the weight on every forward (the real-valued weight stays the trained one,
  as in every QAT paper: the straight-through gradient updates it),
* ``input_quantizer`` applied to the layer's input (the activations of the layer before it),
* ``gradient_quantizer`` applied to the layer's output: identity forward, quantized gradient backward
  (DoReFa's gradient quantization).

With ``activation_sites="graph"`` (the default for int8/affine on an fx-traceable model) the tensors residual adds
read and write get one quantizer each, at the module producing them (:mod:`effdl_lightning.core.quant.graph`).

Weights that are exactly zero (pruned) stay exactly zero after fake quantization, whatever the quantizer maps
zero to (DoReFa's k-bit grid has no zero, binary schemes only ±1): pruning and quantization compose.

What was swapped is returned as a compression-record entry (``kind="quantize"``) that
:func:`apply_quantization_entry` replays on a freshly built model, so a quantized checkpoint loads into the
model class and ``fit(ckpt_path=...)`` resumes mid-QAT.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effdl_lightning.core.quant.graph import attach_output_quantizers, plan_activation_sites
from effdl_lightning.core.quant.quantizers import FakeQuantizer, build_quantizer
from effdl_lightning.core.selection import select_modules

__all__ = [
    "ACTIVATION_SITES",
    "FIRST_LAST_POLICIES",
    "SCHEMES",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLinear",
    "QuantizationConfig",
    "QuantizedLayer",
    "apply_quantization_entry",
    "freeze_ranges_",
    "is_quantized",
    "quantize_",
    "quantized_layers",
    "quantized_size_bytes",
]

log = logging.getLogger(__name__)

#: schemes and their default (weight, activation, gradient) bits; None = full precision
SCHEMES: dict[str, tuple[int, int | None, int | None]] = {
    "int8": (8, 8, None),
    "affine": (8, 8, None),
    "dorefa": (1, 2, None),  # DoReFa's W1A2 (its Table 1 row); G full precision unless asked
    "binaryconnect": (1, None, None),
    "binarynet": (1, 1, None),
}
#: where activations are quantized (see QuantizationConfig.activation_sites)
ACTIVATION_SITES = ("auto", "inputs", "graph")
#: what happens to the first / last quantizable layer
FIRST_LAST_POLICIES = ("quantize", "weights", "full_precision")
# the papers' choices (issue 6: full precision by default for low-bit schemes "as the papers do"):
# DoReFa keeps the first and last layers in full precision; BinaryConnect binarizes every weight; BinaryNet
# binarizes every weight and every activation except the network's input (its first layer reads real pixels)
_DEFAULT_FIRST_LAST: dict[str, tuple[str, str]] = {
    "int8": ("quantize", "quantize"),
    "affine": ("quantize", "quantize"),
    "dorefa": ("full_precision", "full_precision"),
    "binaryconnect": ("quantize", "quantize"),
    "binarynet": ("weights", "quantize"),
}


@dataclass(frozen=True)
class QuantizationConfig:
    """What to fake-quantize and how (validated on construction).

    Args:
        scheme: ``int8`` (8-bit per-channel symmetric weights, per-tensor affine uint8 activations, Jacob et
            al. arXiv 1712.05877), ``affine`` (the same at any bit width 2..16), ``dorefa`` (arXiv
            1606.06160), ``binaryconnect`` (arXiv 1511.00363), ``binarynet`` (arXiv 1602.02830).
        weight_bits: bits of the weights; ``None`` = the scheme's default (int8/affine 8, others 1).
        activation_bits: bits of each quantized layer's input; ``None`` = the scheme's default; ``32`` or
            ``0`` = full precision.
        gradient_bits: DoReFa only: bits of the gradient at each layer's output; ``None`` = full precision.
        learn_scale: affine schemes: learn the scales with LSQ (arXiv 1902.08153) instead of observing ranges.
        stochastic: BinaryConnect: stochastic binarization (real weights used at test time, as the paper).
        first_layer / last_layer: ``quantize``, ``weights`` (quantize the weights, keep the input real) or
            ``full_precision``; ``None`` = the paper's choice for the scheme.
        binary_scale: binary schemes: the weights' binary magnitude ``H`` (their real values are clipped to
            ``[−H, H]``): ``"glorot"`` = per layer ``√(1.5/(fan_in + fan_out))``, the authors' code (close to
            PyTorch's default init bound, so stochastic binarization is not a coin flip at init and an
            optimizer step moves a weight by a useful fraction of its range), or a number (1.0 = the papers'
            formulas literally; then the weights need an init of that scale and a matching learning rate).
        activation_sites: where activations are quantized (int8/affine schemes): ``inputs`` = each quantized
            layer's input (any model); ``graph`` = also every tensor a residual add reads or writes, once, where
            it is produced (:mod:`effdl_lightning.core.quant.graph`; needs a ``torch.fx``-traceable model), so
            that an int8 runtime adds integers and keeps the convs around the add in int8; ``auto`` = ``graph``
            for the int8/affine schemes with quantized activations when the model traces (``inputs`` with a
            logged warning when it does not), else ``inputs``.
    """

    scheme: str = "int8"
    weight_bits: int | None = None
    activation_bits: int | None = None
    gradient_bits: int | None = None
    learn_scale: bool = False
    stochastic: bool = False
    first_layer: str | None = None
    last_layer: str | None = None
    binary_scale: str | float = "glorot"
    activation_sites: str = "auto"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r}; known: {sorted(SCHEMES)}")
        w, a, g = self.bits()
        rules: dict[str, tuple[set[int], set[int | None], set[int | None]]] = {
            "int8": ({8}, {8, None}, {None}),
            "affine": (set(range(2, 17)), {*range(2, 17), None}, {None}),
            "dorefa": (set(range(1, 33)), {*range(1, 32), None}, {*range(1, 32), None}),
            "binaryconnect": ({1}, {None}, {None}),
            "binarynet": ({1}, {1, None}, {None}),
        }
        allowed_w, allowed_a, allowed_g = rules[self.scheme]
        for what, value, allowed in (
            ("weight_bits", w, allowed_w),
            ("activation_bits", a, allowed_a),
            ("gradient_bits", g, allowed_g),
        ):
            if value not in allowed:
                shown = _describe(allowed)
                raise ValueError(f"scheme {self.scheme!r}: {what}={value} is outside the allowed {shown}")
        for what, policy in (("first_layer", self.first_layer), ("last_layer", self.last_layer)):
            if policy is not None and policy not in FIRST_LAST_POLICIES:
                raise ValueError(f"{what}={policy!r}; allowed: {FIRST_LAST_POLICIES} or None")
        if self.learn_scale and self.scheme not in ("int8", "affine"):
            raise ValueError(f"learn_scale applies to the int8/affine schemes, not {self.scheme!r}")
        scale = self.binary_scale
        if scale != "glorot" and (isinstance(scale, (bool, str)) or not float(scale) > 0):
            raise ValueError(f"binary_scale={scale!r}; allowed: 'glorot' or a number > 0")
        if self.stochastic and self.scheme != "binaryconnect":
            raise ValueError(f"stochastic applies to the binaryconnect scheme, not {self.scheme!r}")
        if self.activation_sites not in ACTIVATION_SITES:
            raise ValueError(f"activation_sites={self.activation_sites!r}; allowed: {ACTIVATION_SITES}")
        if self.activation_sites == "graph" and (self.scheme not in ("int8", "affine") or a is None):
            raise ValueError(
                f"activation_sites='graph' needs the int8/affine schemes with quantized activations, not scheme "
                f"{self.scheme!r} with activation_bits={a}"
            )

    def graph_sites(self) -> bool | None:
        """True: graph-level sites; False: layer inputs; None: graph if the model traces (``auto``)."""
        if (
            self.activation_sites == "inputs"
            or self.scheme not in ("int8", "affine")
            or self.bits()[1] is None
        ):
            return False
        return True if self.activation_sites == "graph" else None

    def bits(self) -> tuple[int, int | None, int | None]:
        """(weight, activation, gradient) bits after defaults; ``None`` = full precision."""
        dw, da, dg = SCHEMES[self.scheme]
        w = dw if self.weight_bits is None else self.weight_bits
        a = da if self.activation_bits is None else self.activation_bits
        g = dg if self.gradient_bits is None else self.gradient_bits
        # 32 (or 0) bits means "not quantized", for activations and gradients alike
        return w, None if a in (0, 32) else a, None if g in (0, 32) else g

    def policies(self) -> tuple[str, str]:
        """(first layer, last layer) policies after defaults."""
        first, last = _DEFAULT_FIRST_LAST[self.scheme]
        return self.first_layer or first, self.last_layer or last

    def layer_quantizers(self, module: nn.Module, policy: str = "quantize") -> dict[str, Any]:
        """The quantizer configs (plain data) of one layer: ``{"weight": ..., "input": ..., "gradient": ...}``."""
        if policy == "full_precision":
            return {}
        w, a, g = self.bits()
        weight = getattr(module, "weight", None)
        channels = int(weight.shape[0]) if isinstance(weight, Tensor) else None
        out: dict[str, Any] = {}
        if self.scheme in ("int8", "affine"):
            out["weight"] = {
                "type": "AffineQuantizer",
                "bits": w,
                "symmetric": True,
                "channels": channels,
                "axis": 0,
                "observer": "minmax",
                "learn_scale": self.learn_scale,
            }
            if a is not None:
                out["input"] = {
                    "type": "AffineQuantizer",
                    "bits": a,
                    "symmetric": False,
                    "observer": "ema",
                    "learn_scale": self.learn_scale,
                }
        elif self.scheme == "dorefa":
            out["weight"] = {"type": "DoReFaWeightQuantizer", "bits": w}
            if a is not None:
                out["input"] = {"type": "DoReFaActivationQuantizer", "bits": a}
            if g is not None:
                out["gradient"] = {"type": "DoReFaGradientQuantizer", "bits": g}
        elif self.scheme == "binaryconnect":
            h = self.weight_scale(module)
            out["weight"] = {"type": "BinaryConnectQuantizer", "stochastic": self.stochastic, "h": h}
        else:  # binarynet
            out["weight"] = {"type": "BinaryNetQuantizer", "h": self.weight_scale(module)}
            if a is not None:
                out["input"] = {"type": "BinaryNetQuantizer"}
        if policy == "weights":
            out.pop("input", None)
        return out

    def weight_scale(self, module: nn.Module) -> float:
        """The binary magnitude ``H`` of one layer's weights (see ``binary_scale``)."""
        if self.binary_scale != "glorot":
            return float(self.binary_scale)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() < 2:
            return 1.0
        receptive = weight[0, 0].numel()  # Glorot's fans for a conv: channels × kernel size
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        return math.sqrt(1.5 / (fan_in + fan_out))


def _describe(allowed: set[Any]) -> str:
    ints = sorted(v for v in allowed if v is not None)
    text = f"{ints[0]}..{ints[-1]}" if len(ints) > 2 else str(ints)
    return text + (" or None (full precision)" if None in allowed else "")


class _QuantizedLayer:
    """What the quantized twins share: the fake-quantized weight and the quantizer slots."""

    weight: Tensor
    weight_quantizer: FakeQuantizer | None
    input_quantizer: FakeQuantizer | None
    gradient_quantizer: FakeQuantizer | None

    def quantized_weight(self) -> Tensor:
        """The weight as the forward uses it: fake-quantized, exact zeros kept at zero."""
        w = self.weight
        if self.weight_quantizer is None:
            return w
        q = self.weight_quantizer(w)
        return torch.where(w == 0, w, q)  # pruned weights stay zero (gradient still flows to w)

    def _quantize_input(self, x: Tensor) -> Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    def _quantize_output(self, y: Tensor) -> Tensor:
        return self.gradient_quantizer(y) if self.gradient_quantizer is not None else y


class QuantLinear(_QuantizedLayer, nn.Linear):
    """``nn.Linear`` with fake-quantized weight, input and (DoReFa) output gradient."""

    def forward(self, x: Tensor) -> Tensor:
        return self._quantize_output(F.linear(self._quantize_input(x), self.quantized_weight(), self.bias))


class QuantConv1d(_QuantizedLayer, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized weight, input and (DoReFa) output gradient."""

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)
        return self._quantize_output(y)


class QuantConv2d(_QuantizedLayer, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight, input and (DoReFa) output gradient."""

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)
        return self._quantize_output(y)


class QuantConv3d(_QuantizedLayer, nn.Conv3d):
    """``nn.Conv3d`` with fake-quantized weight, input and (DoReFa) output gradient."""

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)
        return self._quantize_output(y)


_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}
_QUANTIZED = (QuantLinear, QuantConv1d, QuantConv2d, QuantConv3d)
#: any of the quantized twins
QuantizedLayer = QuantLinear | QuantConv1d | QuantConv2d | QuantConv3d
_SLOTS = {"weight": "weight_quantizer", "input": "input_quantizer", "gradient": "gradient_quantizer"}


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is one of the quantized twins."""
    return isinstance(module, _QUANTIZED)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    """``{name: layer}`` of the quantized layers of ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _QUANTIZED)}


def _swap(module: nn.Module, name: str, quantizers: Mapping[str, Mapping[str, Any] | None]) -> None:
    twin = _TWINS.get(type(module))
    if twin is None:
        raise ValueError(
            f"layer {name!r} of type {type(module).__name__} has no quantized twin; quantizable types are "
            f"exactly {[t.__name__ for t in _TWINS]} (subclasses are not swapped: exclude the layer)"
        )
    weight = getattr(module, "weight", None)
    device = weight.device if isinstance(weight, Tensor) else None
    module.__class__ = twin
    for key, slot in _SLOTS.items():
        cfg = quantizers.get(key)
        quantizer = build_quantizer(cfg) if cfg else None
        if quantizer is not None and device is not None:
            quantizer.to(device)
        setattr(module, slot, quantizer)


def quantize_(
    model: nn.Module,
    config: QuantizationConfig,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fake-quantize the convs and linears of ``model`` in place; returns the compression-record entry.

    Layers are those of exact types Conv1d/2d/3d and Linear selected by the glob patterns; other layer types
    (transposed convs, user subclasses) are left in full precision with a logged reason. The first and last
    selected layers in module order follow ``config.first_layer`` / ``config.last_layer``.

    Raises:
        ValueError: a pattern that matches nothing, nothing selected, or an already quantized model.
    """
    if quantized_layers(model):
        raise ValueError("the model already has quantized layers; quantize_ applies once")
    selected = select_modules(model, include, exclude)
    layers = {n: m for n, m in selected.items() if type(m) in _TWINS}
    for name, module in selected.items():
        if name not in layers:
            log.info(
                "quantize_: %s (%s) stays in full precision: no quantized twin", name, type(module).__name__
            )
    if not layers:
        raise ValueError(
            f"no quantizable layer among {sorted(selected)} (types {[t.__name__ for t in _TWINS]})"
        )
    names = list(layers)
    first_policy, last_policy = config.policies()
    plan: dict[str, dict[str, Any]] = {}
    strictness = {p: i for i, p in enumerate(FIRST_LAST_POLICIES)}  # a layer both first and last: stricter
    for name, module in layers.items():
        policies = [first_policy] if name == names[0] else []
        policies += [last_policy] if name == names[-1] else []
        policy = max(policies or ["quantize"], key=strictness.__getitem__)
        quantizers = config.layer_quantizers(module, policy)
        if quantizers:
            plan[name] = quantizers
    outputs = _graph_outputs(model, config, plan)
    entry = {"kind": "quantize", "config": asdict(config), "layers": plan, "outputs": outputs}
    apply_quantization_entry(model, entry)
    return entry


def _graph_outputs(
    model: nn.Module, config: QuantizationConfig, plan: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Graph-level sites (``config.activation_sites``): ``{host path: quantizer config}``; drops the input
    quantizers of layers whose input is hosted (edits ``plan``)."""
    graph = config.graph_sites()
    if graph is False:
        return {}
    try:
        hosts, hosted = plan_activation_sites(model, set(plan))
    except ValueError as err:
        if graph:
            raise
        log.warning("quantize_: activation_sites='auto' falls back to layer inputs: %s", err)
        return {}
    act = next((q["input"] for q in plan.values() if "input" in q), None)
    if act is None:
        return {}
    for name in hosted:
        plan[name].pop("input", None)
    return {path: dict(act) for path in hosts}


def apply_quantization_entry(model: nn.Module, entry: Mapping[str, Any]) -> None:
    """Replay a ``kind="quantize"`` record entry: swap the named layers with the recorded quantizers and attach
    the recorded output quantizers (``"outputs"``, graph-level sites)."""
    for name, quantizers in entry["layers"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the record quantizes {name!r}, which this model does not have") from err
        _swap(module, name, quantizers)
    attach_output_quantizers(model, entry.get("outputs") or {})


def freeze_ranges_(model: nn.Module, frozen: bool = True) -> int:
    """Stop (or restart) range observation in every quantizer that observes; returns how many changed."""
    count = 0
    for module in model.modules():
        method = getattr(module, "freeze" if frozen else "unfreeze", None)
        if isinstance(module, FakeQuantizer) and callable(method):
            method()
            count += 1
    return count


def quantized_size_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters with each fake-quantized weight at its bit width.

    A quantized weight counts ``ceil(numel · bits / 8)`` bytes plus 4 bytes per scale it needs (one per
    channel for per-channel affine, one per tensor otherwise when the scheme has a scale); every other
    parameter (biases, batch-norm affine, full-precision layers) counts at its own element size. Buffers
    (batch-norm statistics, observers) are left out. An estimate of the packed file: the exporters in
    :mod:`effdl_lightning.export` write and measure the real one.
    """
    quantized: dict[int, int] = {}
    for layer in quantized_layers(model).values():
        quantizer = layer.weight_quantizer
        if quantizer is None or not quantizer.enabled:
            continue
        bits = int(getattr(quantizer, "bits", 32))
        if bits >= 32:
            continue
        scales = 0
        qparams = getattr(quantizer, "qparams", None)
        if callable(qparams):
            scales = int(qparams()[0].numel())
        elif getattr(quantizer, "has_scale", False):
            scales = 1
        quantized[id(layer.weight)] = -(-layer.weight.numel() * bits // 8) + 4 * scales
    # learned (LSQ) scales are parameters of the quantizers: counted with their weight above
    own = {id(p) for m in model.modules() if isinstance(m, FakeQuantizer) for p in m.parameters()}
    total = 0
    for p in model.parameters():
        if id(p) in quantized:
            total += quantized.pop(id(p))
        elif id(p) not in own:
            total += p.numel() * p.element_size()
    return total
