"""Fake quantizers as ``nn.Module``s with state: affine (int8 / k-bit, LSQ), DoReFa, BinaryConnect, BinaryNet.

Every quantizer is a :class:`FakeQuantizer`: ``forward(x)`` returns the fake-quantized tensor (same shape and
dtype; ``x`` itself when ``enabled`` is False), ``config()`` its constructor arguments as plain data that
:func:`build_quantizer` rebuilds it from (with every buffer at its final shape, so the rebuilt quantizer
loads the original's ``state_dict``), and, for weight quantizers, ``codes(x)`` / ``decode(codes)`` the
integer codes behind the forward, with ``decode(codes(x)) == forward(x)`` bit for bit in eval mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.quant.functions import (
    DOREFA_MAX_BITS,
    DOREFA_MIN_BITS,
    SCALE_EPS,
    _check_bool,
    _check_int,
    _dorefa_weight_unit,
    affine_qparams,
    binaryconnect,
    binarynet_sign,
    dequantize_affine,
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    fake_quantize_affine,
    quantize_affine,
)

__all__ = [
    "OBSERVERS",
    "AffineQuantizer",
    "BinaryConnectQuantizer",
    "BinaryNetQuantizer",
    "DoReFaActivationQuantizer",
    "DoReFaGradientQuantizer",
    "DoReFaWeightQuantizer",
    "FakeQuantizer",
    "build_quantizer",
]

#: range observers of :class:`AffineQuantizer`
OBSERVERS: tuple[str, ...] = ("minmax", "ema")
#: bit widths of :class:`AffineQuantizer`
AFFINE_MIN_BITS, AFFINE_MAX_BITS = 2, 16

_REGISTRY: dict[str, type[FakeQuantizer]] = {}


class FakeQuantizer(nn.Module):
    """Base of the fake quantizers: the interface the QAT callback and the exporters rely on.

    Attributes:
        bits: the bit width of the quantized values (32 = full precision).
        enabled: when False, ``forward`` returns its input unchanged (a plain attribute, not saved).
    """

    bits: int

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.enabled: bool = True
        self._config = dict(config)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    def forward(self, x: Tensor) -> Tensor:
        """The fake-quantized ``x`` (same shape and dtype), or ``x`` itself when not ``enabled``."""
        return self._fake_quantize(x) if self.enabled else x

    def _fake_quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """``{"type": class name, **constructor kwargs}`` (JSON-able) for :func:`build_quantizer`."""
        return {"type": type(self).__name__, **self._config}

    @property
    def has_scale(self) -> bool:
        """Whether decoding needs a stored floating-point scale next to the codes."""
        return False

    @property
    def code_range(self) -> tuple[int, int]:
        """The inclusive (min, max) of :meth:`codes`."""
        raise NotImplementedError(f"{type(self).__name__} has no integer codes")

    def codes(self, x: Tensor) -> Tensor:
        """The integer codes (int64) this quantizer maps ``x`` to (``enabled`` is ignored)."""
        raise NotImplementedError(f"{type(self).__name__} has no integer codes")

    def decode(self, codes: Tensor) -> Tensor:
        """Float32 values of ``codes``: ``decode(codes(x)) == forward(x)`` in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} has no integer codes")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())


def build_quantizer(config: Mapping[str, Any]) -> FakeQuantizer:
    """Rebuild a quantizer from its :meth:`FakeQuantizer.config` (``type`` = a registered class name)."""
    kwargs = dict(config)
    name = kwargs.pop("type", None)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown quantizer type {name!r}; registered: {sorted(_REGISTRY)}")
    cls = _REGISTRY[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {name}; allowed: {params}")
    return cls(**kwargs)


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class AffineQuantizer(FakeQuantizer):
    """Uniform affine fake quantizer (Jacob et al., arXiv 1712.05877), optionally with LSQ scales (arXiv 1902.08153).

    ``x̂ = (clamp(round(x/s) + z, qmin, qmax) − z)·s``, per tensor or per channel (``channels`` values of
    ``s``, ``z`` along dimension ``axis``), straight-through gradient inside the range (see
    :func:`~effdl_lightning.core.quant.functions.fake_quantize_affine`). Ranges, for ``bits = b``:

    * ``symmetric`` (weights; signed by default): narrow ``[−(2^(b−1)−1), 2^(b−1)−1]`` with ``z = 0``, e.g.
      int8 ``[−127, 127]``: the range is symmetric about 0, so ``s = max|w|/127`` and the codes fit int8
      kernels that assume a zero point of 0 (and ``−128·−128`` products never occur);
    * affine, unsigned (activations; default): ``[0, 2^b − 1]`` (uint8 for 8 bits); ``signed=True``:
      ``[−2^(b−1), 2^(b−1) − 1]``.

    ``(s, z)`` follow from an observed range ``[min_val, max_val]`` as in ``torch.ao``
    (:func:`~effdl_lightning.core.quant.functions.affine_qparams`). Observer ``minmax``: the range of the
    current tensor (weights: recomputed on every training forward); ``ema``: exponential moving average of
    the per-batch min/max, ``m ← m + c·(m_batch − m)`` (``c = averaging_constant``; the first batch
    initializes; activations, arXiv 1712.05877 §3.1). Observation happens in training mode while
    ``observing`` (until :meth:`freeze`), and always when never initialized. Under ``torch.distributed``
    (DDP), an ``ema`` observer in training mode reduces the batch min/max over the ranks (min and max of the
    global batch), so all ranks keep the same range.

    ``learn_scale=True``: ``scale`` is an ``nn.Parameter`` initialised from the first observed range (the
    observer's ``s``, not LSQ's ``2·E|x|/√qmax``), then learned with LSQ's gradient (no more observation);
    ``z`` stays at its initial value. The scale is floored at float32's eps in the forward.

    Args:
        bits: bit width, 2..16.
        symmetric: symmetric range about 0 (``z`` fixed) instead of affine.
        channels: per-channel quantization with this many channels; None: per tensor.
        axis: the channel dimension (per channel only), >= 0.
        observer: ``"minmax"`` or ``"ema"``.
        averaging_constant: ``c`` of the ``ema`` observer, in (0, 1] (torch.ao's default 0.01).
        learn_scale: learn the scale with LSQ.
        signed: signed integer range; None: ``symmetric``.
    """

    min_val: Tensor
    max_val: Tensor
    scale: Tensor
    zero_point: Tensor
    initialized: Tensor

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        channels: int | None = None,
        axis: int = 0,
        observer: str = "minmax",
        averaging_constant: float = 0.01,
        learn_scale: bool = False,
        signed: bool | None = None,
    ) -> None:
        _check_int("bits", bits, AFFINE_MIN_BITS, AFFINE_MAX_BITS)
        _check_bool("symmetric", symmetric)
        if channels is not None:
            _check_int("channels", channels, 1)
        _check_int("axis", axis, 0)
        if observer not in OBSERVERS:
            raise ValueError(f"`observer` must be one of {OBSERVERS}, got {observer!r}")
        c = averaging_constant
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 1.0:
            raise ValueError(f"`averaging_constant` must be a float in (0, 1], got {c!r}")
        _check_bool("learn_scale", learn_scale)
        if signed is not None:
            _check_bool("signed", signed)
        super().__init__(bits=bits, symmetric=symmetric, channels=channels, axis=axis, observer=observer)
        self._config.update(averaging_constant=float(c), learn_scale=learn_scale, signed=signed)
        self.bits = bits
        self.symmetric = symmetric
        self.signed = symmetric if signed is None else signed
        self.channels = channels
        self._axis = axis
        self.observer = observer
        self.averaging_constant = float(c)
        self.learn_scale = learn_scale
        self.observing = True
        half = 2 ** (bits - 1)
        if not self.signed:
            self.qmin, self.qmax = 0, 2**bits - 1
        else:
            self.qmin, self.qmax = (-(half - 1) if symmetric else -half), half - 1
        shape = (channels,) if channels is not None else ()
        self.register_buffer("min_val", torch.zeros(shape))
        self.register_buffer("max_val", torch.zeros(shape))
        if learn_scale:
            self.scale = nn.Parameter(torch.ones(shape))
        else:
            self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def axis(self) -> int | None:
        """The channel dimension, or None when per tensor."""
        return None if self.channels is None else self._axis

    @property
    def has_scale(self) -> bool:
        return True

    @property
    def code_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax

    def freeze(self) -> None:
        """Stop updating the observed range (and the scale and zero point that follow from it)."""
        self.observing = False

    def unfreeze(self) -> None:
        """Resume observing in training mode."""
        self.observing = True

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Update ``min_val``/``max_val`` from ``x`` and recompute ``scale``/``zero_point`` from them."""
        x = x.detach()
        if x.numel() == 0:
            return
        if self.channels is not None:
            if x.dim() <= self._axis or x.shape[self._axis] != self.channels:
                raise ValueError(
                    f"expected {self.channels} channels along axis {self._axis}, got shape {tuple(x.shape)}"
                )
            flat = x.movedim(self._axis, 0).reshape(self.channels, -1)
            lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        else:
            lo, hi = torch.aminmax(x)
        lo, hi = lo.to(self.min_val.dtype), hi.to(self.max_val.dtype)
        if self.observer == "ema" and self.training and _distributed():
            # data-parallel ranks see different batches: observe the range of the global batch, so every rank
            # quantizes alike and N processes observe what 1 process with the whole batch would
            lo, hi = lo.clone(), hi.clone()
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        if self.observer == "ema" and bool(self.initialized):
            lo = self.min_val + self.averaging_constant * (lo - self.min_val)
            hi = self.max_val + self.averaging_constant * (hi - self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        scale, zero_point = affine_qparams(self.min_val, self.max_val, self.qmin, self.qmax, self.symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.initialized.fill_(True)

    def _maybe_observe(self, x: Tensor, training: bool) -> None:
        if not bool(self.initialized) or (training and self.observing and not self.learn_scale):
            self.observe(x)

    def _scale(self) -> Tensor:
        return self.scale.clamp_min(SCALE_EPS) if self.learn_scale else self.scale

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)``: float32 and int64 tensors of shape ``[channels]`` or ``[]`` (a copy)."""
        return self._scale().detach().clone(), self.zero_point.clone()

    def _fake_quantize(self, x: Tensor) -> Tensor:
        self._maybe_observe(x, self.training)
        return fake_quantize_affine(x, self._scale(), self.zero_point, self.qmin, self.qmax, self.axis)

    def codes(self, x: Tensor) -> Tensor:
        """``clamp(round(x/s) + z, qmin, qmax)`` with the current ``(s, z)`` (observing ``x`` first only if
        never initialized)."""
        self._maybe_observe(x, training=False)
        return quantize_affine(x, self._scale(), self.zero_point, self.qmin, self.qmax, self.axis)

    def decode(self, codes: Tensor) -> Tensor:
        """``(q − z)·s`` in float32."""
        return dequantize_affine(codes, self._scale(), self.zero_point, self.axis)


class _DoReFaQuantizer(FakeQuantizer):
    """Shared by the DoReFa quantizers: ``bits`` (k) in 1..32, codes in ``[0, 2^k − 1]`` below 32 bits."""

    def __init__(self, bits: int) -> None:
        _check_int("bits", bits, DOREFA_MIN_BITS, DOREFA_MAX_BITS)
        super().__init__(bits=bits)
        self.bits = bits

    @property
    def code_range(self) -> tuple[int, int]:
        if self.bits == DOREFA_MAX_BITS:
            raise NotImplementedError(f"32-bit {type(self).__name__} is full precision: no integer codes")
        return 0, 2**self.bits - 1


class DoReFaWeightQuantizer(_DoReFaQuantizer):
    """DoReFa-Net k-bit weights (Zhou et al., arXiv 1606.06160, eq. 8 and 9).

    ``k > 1``: ``2·quantize_k(tanh w / (2·max|tanh w|) + ½) − 1`` (codes ``q ∈ [0, 2^k − 1]``, value
    ``2q/(2^k − 1) − 1``); ``k = 1``: ``sign(w)·E|w|`` (codes 0/1 for −/+; ``E|w|`` is kept in the ``scale``
    buffer, updated by every forward and by :meth:`codes`); ``k = 32``: the identity (no codes). The k-bit
    grid has no zero for any k.

    Args:
        bits: k, 1..32.
    """

    scale: Tensor

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        if bits == 1:
            self.register_buffer("scale", torch.ones(()))

    @property
    def has_scale(self) -> bool:
        return self.bits == 1

    def _fake_quantize(self, x: Tensor) -> Tensor:
        if self.bits == 1:
            self.scale.copy_(x.detach().abs().mean())
        return dorefa_weight(x, self.bits)

    def codes(self, x: Tensor) -> Tensor:
        n = self.code_range[1]  # 32 bits: NotImplementedError
        x = x.detach()
        if self.bits == 1:
            self.scale.copy_(x.abs().mean())
            return (x >= 0).to(torch.int64)
        return torch.round(_dorefa_weight_unit(x) * float(n)).to(torch.int64)

    def decode(self, codes: Tensor) -> Tensor:
        n = self.code_range[1]
        if self.bits == 1:
            s = self.scale.to(torch.float32)
            return torch.where(codes == 1, s, -s)
        return 2 * (codes.to(torch.float32) / float(n)) - 1


class DoReFaActivationQuantizer(_DoReFaQuantizer):
    """DoReFa-Net k-bit activations ``quantize_k(clip(x, 0, 1))`` (arXiv 1606.06160, §2.4).

    Codes ``q = round((2^k − 1)·clip(x, 0, 1))``, value ``q/(2^k − 1)``; ``k = 32``: the identity.

    Args:
        bits: k, 1..32.
    """

    def _fake_quantize(self, x: Tensor) -> Tensor:
        return dorefa_activation(x, self.bits)

    def codes(self, x: Tensor) -> Tensor:
        n = self.code_range[1]
        return torch.round(torch.clamp(x.detach(), 0.0, 1.0) * float(n)).to(torch.int64)

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(torch.float32) / float(self.code_range[1])


class DoReFaGradientQuantizer(_DoReFaQuantizer):
    """DoReFa-Net k-bit gradients (arXiv 1606.06160, eq. 12): identity forward, quantized gradient backward.

    See :func:`~effdl_lightning.core.quant.functions.dorefa_gradient`. The noise ``N(k)`` is drawn from
    torch's global RNG, so ``lightning.seed_everything`` makes runs reproducible. ``k = 32``: the identity.
    No codes (it quantizes gradients).

    Args:
        bits: k, 1..32.
    """

    @property
    def code_range(self) -> tuple[int, int]:
        raise NotImplementedError("DoReFaGradientQuantizer quantizes gradients: no integer codes")

    def _fake_quantize(self, x: Tensor) -> Tensor:
        return dorefa_gradient(x, self.bits)


def _check_h(h: float) -> None:
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
        raise ValueError(f"`h` must be a float > 0, got {h!r}")


class _SignQuantizer(FakeQuantizer):
    """Shared by the ±H quantizers: 1 bit, codes 0/1 for −H/+H."""

    bits = 1
    h = 1.0

    @property
    def code_range(self) -> tuple[int, int]:
        return 0, 1

    def codes(self, x: Tensor) -> Tensor:
        _ = self.code_range
        return (x.detach() >= 0).to(torch.int64)

    def decode(self, codes: Tensor) -> Tensor:
        _ = self.code_range
        return torch.where(codes == 1, self.h, -self.h)


class BinaryConnectQuantizer(_SignQuantizer):
    """BinaryConnect ±1 weights (Courbariaux et al., arXiv 1511.00363).

    Training: deterministic ``H·sign`` (+H for w ≥ 0) or ``stochastic`` (+H with probability
    ``clip((w/H + 1)/2, 0, 1)``), identity gradient to the real weight. Eval, the paper's test-time rule
    (§2.6): deterministic → the binary weights; stochastic → the real-valued weights (in [−H, H], the same
    scale). Codes 0/1 for −H/+H — deterministic only (a stochastic model is evaluated with real weights, so
    it has no binary codes).

    Args:
        stochastic: stochastic binarization (global RNG).
        h: the binary magnitude ``H`` (the paper: 1; the authors' code: Glorot's per-layer scale, which
            ``QuantizationConfig`` uses by default so that stochastic binarization of weights at their
            initial scale is not a coin flip).
    """

    def __init__(self, stochastic: bool = False, h: float = 1.0) -> None:
        _check_bool("stochastic", stochastic)
        _check_h(h)
        super().__init__(stochastic=stochastic, h=float(h))
        self.stochastic = stochastic
        self.h = float(h)

    @property
    def code_range(self) -> tuple[int, int]:
        if self.stochastic:
            raise NotImplementedError(
                "stochastic BinaryConnect is evaluated with the real-valued weights (arXiv 1511.00363, §2.6): "
                "no binary codes; use stochastic=False to deploy binary weights"
            )
        return 0, 1

    def _fake_quantize(self, x: Tensor) -> Tensor:
        if self.stochastic and not self.training:
            return x  # the paper's test-time rule for stochastic BinaryConnect: the real-valued weights
        return binaryconnect(x, stochastic=self.stochastic, h=self.h)


class BinaryNetQuantizer(_SignQuantizer):
    """BinaryNet sign for weights and activations (Hubara, Courbariaux et al., arXiv 1602.02830).

    ``+H if x ≥ 0 else −H``, gradient ``g·1[|x| ≤ H]``, in training and eval. Codes 0/1 for −H/+H.
    ``H = 1`` for activations (the paper); weights may use a per-layer ``H`` (see
    :class:`BinaryConnectQuantizer`).
    """

    def __init__(self, h: float = 1.0) -> None:
        _check_h(h)
        super().__init__(h=float(h))
        self.h = float(h)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        return binarynet_sign(x, self.h)
