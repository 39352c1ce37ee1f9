"""Fake quantization with straight-through estimators (STE), as plain functions of tensors.

Every quantizer here rounds in the forward pass and passes a surrogate gradient in the backward pass
(Bengio et al.'s straight-through estimator, arXiv 1308.3432): the identity, the identity cancelled where the
input is out of range, or the paper's own rule. Rounding is ``torch.round`` (half to even), like
``torch.fake_quantize_*`` and every integer kernel.

* int8 / k-bit affine (Jacob et al., arXiv 1712.05877) with LSQ scales (Esser et al., arXiv 1902.08153):
  :func:`fake_quantize_affine`, :func:`affine_qparams`, :func:`quantize_affine`, :func:`dequantize_affine`;
* DoReFa-Net (Zhou et al., arXiv 1606.06160): :func:`quantize_k`, :func:`dorefa_weight`,
  :func:`dorefa_activation`, :func:`dorefa_gradient`;
* BinaryConnect (Courbariaux et al., arXiv 1511.00363): :func:`binaryconnect`;
* BinaryNet (Hubara, Courbariaux et al., arXiv 1602.02830): :func:`binarynet_sign`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "affine_qparams",
    "binaryconnect",
    "binarynet_sign",
    "dequantize_affine",
    "dorefa_activation",
    "dorefa_gradient",
    "dorefa_weight",
    "fake_quantize_affine",
    "quantize_affine",
    "quantize_k",
    "round_ste",
]

#: bit widths of the DoReFa quantizers; 32 is full precision (the identity)
DOREFA_MIN_BITS, DOREFA_MAX_BITS = 1, 32
#: floor on affine scales, as ``torch.ao`` observers (``torch.finfo(torch.float32).eps``)
SCALE_EPS = float(torch.finfo(torch.float32).eps)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool (True or False), got {value!r}")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be an int {allowed}, got {value!r}")


def _check_k(k: int) -> int:
    _check_int("k", k, DOREFA_MIN_BITS, DOREFA_MAX_BITS)
    return k


def _check_range(qmin: int, qmax: int) -> None:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"`{name}` must be an int, got {v!r}")
    if qmin >= qmax:
        raise ValueError(f"`qmin` must be < `qmax`, got qmin={qmin}, qmax={qmax}")


def _ones_where(mask: Tensor, like: Tensor) -> Tensor:
    """+1 where ``mask``, −1 elsewhere, in ``like``'s dtype."""
    return torch.ones_like(like).masked_fill_(~mask, -1.0)


class _StraightThrough(torch.autograd.Function):
    """``fn(x)`` forward, identity backward (the plain STE)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _straight_through(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    out: Tensor = _StraightThrough.apply(x, fn)
    return out


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` (half to even) forward, identity gradient: ∂round(x)/∂x := 1 (STE, arXiv 1308.3432)."""
    return _straight_through(x, torch.round)


# ----------------------------------------------------------------------------------------------- affine


def _as_float32(v: Tensor | float) -> Tensor:
    return v.to(torch.float32) if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float32)


def _broadcast_qparam(v: Tensor, ndim: int, axis: int | None, size: int | None, name: str) -> Tensor:
    """``v`` reshaped to broadcast against an ``ndim``-d tensor (a scalar, or one value per channel)."""
    if axis is None:
        if v.numel() != 1:
            raise ValueError(f"per-tensor `{name}` must hold one value, got shape {tuple(v.shape)}")
        return v.reshape(())
    if v.numel() != size:
        raise ValueError(
            f"per-channel `{name}` must hold {size} values (size of axis {axis}), got {v.numel()}"
        )
    shape = [1] * ndim
    shape[axis] = v.numel()
    return v.reshape(shape)


def _resolve_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"`axis` must be None or an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    return axis % ndim


def _qparams_for(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | int, axis: int | None
) -> tuple[int | None, Tensor, Tensor]:
    ax = _resolve_axis(axis, x.dim())
    size = x.shape[ax] if ax is not None else None
    s = _broadcast_qparam(_as_float32(scale), x.dim(), ax, size, "scale")
    zp = zero_point if isinstance(zero_point, Tensor) else torch.tensor(zero_point)
    z = _broadcast_qparam(zp.to(torch.float32), x.dim(), ax, size, "zero_point")
    return ax, s, z


class _FakeQuantizeAffine(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float
    ) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # half inputs are computed in float, as torch
        xc = x.to(dtype)
        xs = xc * (1.0 / scale)  # x · (1/s), not x / s: bit-exact with torch.fake_quantize_*
        q = torch.round(xs) + zero_point
        inside = (q >= qmin) & (q <= qmax)
        out = (q.clamp(qmin, qmax) - zero_point) * scale
        ds = None
        if ctx.needs_input_grad[1]:  # LSQ: ∂x̂/∂s = round(x/s) − x/s inside, qmin−z below, qmax−z above
            ds = torch.where(inside, torch.round(xs) - xs, torch.where(q < qmin, qmin, qmax) - zero_point)
        ctx.save_for_backward(inside, ds)
        ctx.scale_shape = scale.shape
        ctx.grad_factor = grad_factor
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inside, ds = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ds is not None:
            full = grad.to(ds.dtype) * ds
            summed = full.sum_to_size(ctx.scale_shape) if len(ctx.scale_shape) else full.sum()
            grad_scale = summed * ctx.grad_factor
        return grad_x, grad_scale, None, None, None, None


def fake_quantize_affine(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> Tensor:
    """Affine fake quantization (Jacob et al., arXiv 1712.05877), with LSQ scale gradients (arXiv 1902.08153).

    Forward: ``x̂ = (clamp(round(x/s) + z, qmin, qmax) − z) · s``, bit-exact with
    ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` (like them it
    computes ``x · (1/s)`` in float32 and rounds half to even). Per tensor when ``axis`` is None (``scale`` and
    ``zero_point`` scalars or one-element tensors), else one ``(s, z)`` per index of ``x``'s dimension ``axis``.

    Backward: ``∂x̂/∂x = 1[qmin ≤ round(x/s) + z ≤ qmax]`` (the STE of ``torch.fake_quantize_*``). When
    ``scale`` requires grad, LSQ's gradient ``∂x̂/∂s = round(x/s) − x/s`` inside the range, ``qmin − z`` below
    and ``qmax − z`` above, times the gradient scale ``g = 1/√(N·qmax)`` with ``N = x.numel() / scale.numel()``
    (the elements sharing one scale). The zero point gets no gradient.

    Args:
        x: tensor to fake-quantize.
        scale: positive step size(s).
        zero_point: integer(s) that 0.0 maps to.
        qmin / qmax: the inclusive integer range.
        axis: the channel dimension for per-channel parameters, or None.

    Returns:
        The fake-quantized tensor, same shape and dtype as ``x``.
    """
    _check_range(qmin, qmax)
    _, s, z = _qparams_for(x, scale, zero_point, axis)
    grad_factor = 1.0
    if s.requires_grad:
        if qmax <= 0:
            raise ValueError(f"a learned (LSQ) scale needs `qmax` > 0 (g = 1/sqrt(N·qmax)), got qmax={qmax}")
        grad_factor = 1.0 / math.sqrt(max(x.numel() // s.numel(), 1) * qmax)
    out: Tensor = _FakeQuantizeAffine.apply(x, s, z, qmin, qmax, grad_factor)
    return out


def quantize_affine(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | int, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """The integer codes ``clamp(round(x/s) + z, qmin, qmax)`` (int64) of :func:`fake_quantize_affine`."""
    _check_range(qmin, qmax)
    _, s, z = _qparams_for(x, scale, zero_point, axis)
    xs = x.detach().to(torch.promote_types(x.dtype, torch.float32)) * (1.0 / s.detach())
    return (torch.round(xs) + z).clamp(qmin, qmax).to(torch.int64)


def dequantize_affine(
    codes: Tensor, scale: Tensor | float, zero_point: Tensor | int, axis: int | None = None
) -> Tensor:
    """``(q − z) · s`` in float32: ``dequantize_affine(quantize_affine(x, ...)) == fake_quantize_affine(x, ...)``."""
    _, s, z = _qparams_for(codes, scale, zero_point, axis)
    return (codes.to(torch.float32) - z) * s.detach()


def affine_qparams(
    min_val: Tensor | float, max_val: Tensor | float, qmin: int, qmax: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """Scale and zero point (float32, int64) of an observed range, as ``torch.ao``'s observers compute them.

    The range is first widened to include 0: ``lo = min(min_val, 0)``, ``hi = max(max_val, 0)``.

    * asymmetric: ``s = (hi − lo)/(qmax − qmin)``, ``z = clamp(qmin − round(lo/s), qmin, qmax)``;
    * symmetric: ``s = max(−lo, hi) / ((qmax − qmin)/2)``; ``z = 0`` for a signed range (``qmin < 0``), else
      the midpoint ``(qmin + qmax + 1) // 2`` (128 for [0, 255], torch.ao's quint8 choice).

    ``s`` is floored at float32's eps. Works elementwise (per channel) on tensors of ranges.
    """
    _check_range(qmin, qmax)
    lo = torch.clamp(_as_float32(min_val), max=0.0)
    hi = torch.clamp(_as_float32(max_val), min=0.0)
    if symmetric:
        scale = torch.max(-lo, hi) / (float(qmax - qmin) / 2)
        scale = torch.clamp(scale, min=SCALE_EPS)
        zero_point = torch.full_like(scale, 0 if qmin < 0 else (qmin + qmax + 1) // 2, dtype=torch.int64)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=SCALE_EPS)
        zero_point = torch.clamp(qmin - torch.round(lo / scale).to(torch.int64), qmin, qmax)
    return scale, zero_point


# ----------------------------------------------------------------------------------------------- DoReFa


def quantize_k(r: Tensor, k: int) -> Tensor:
    """DoReFa's k-bit quantizer of ``r ∈ [0, 1]`` (Zhou et al., arXiv 1606.06160, eq. 5).

    ``quantize_k(r) = round((2^k − 1)·r) / (2^k − 1)`` forward, ``∂/∂r := 1`` backward (STE). ``k = 32`` is
    full precision: ``r`` is returned unchanged.
    """
    if _check_k(k) == DOREFA_MAX_BITS:
        return r
    n = float(2**k - 1)
    return round_ste(r * n) / n


def _dorefa_weight_unit(w: Tensor) -> Tensor:
    """``tanh(w) / (2·max|tanh(w)|) + ½ ∈ [0, 1]``, differentiable (max floored so all-zero w gives ½)."""
    t = torch.tanh(w)
    m = t.abs().amax().clamp_min(torch.finfo(t.dtype).tiny)
    return t / (2 * m) + 0.5


def dorefa_weight(w: Tensor, k: int) -> Tensor:
    """DoReFa's k-bit weights (arXiv 1606.06160, eq. 8 and 9).

    * ``k > 1``: ``2·quantize_k(tanh(w) / (2·max|tanh(w)|) + ½) − 1 ∈ [−1, 1]``; the gradient flows through
      the tanh and the normalisation (max included), only the rounding is straight-through;
    * ``k = 1``: ``sign(w)·E|w|`` (``sign(0) = +1``), gradient ``∂/∂w := 1`` (STE);
    * ``k = 32``: ``w`` (full precision).
    """
    if _check_k(k) == DOREFA_MAX_BITS:
        return w
    if k == 1:
        return _straight_through(w, lambda v: _ones_where(v >= 0, v) * v.abs().mean())
    return 2 * quantize_k(_dorefa_weight_unit(w), k) - 1


def dorefa_activation(x: Tensor, k: int) -> Tensor:
    """DoReFa's k-bit activations ``quantize_k(clip(x, 0, 1))`` (arXiv 1606.06160, §2.4).

    Gradient: 1 on ``[0, 1]``, 0 outside (the clip's), the rounding straight-through. ``k = 32``: ``x``
    unchanged (full precision: the model's own nonlinearity is kept, as in the paper's 32-bit rows).
    """
    if _check_k(k) == DOREFA_MAX_BITS:
        return x
    return quantize_k(torch.clamp(x, 0.0, 1.0), k)


class _DoReFaGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        ctx.k = k
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, dr: Tensor) -> tuple[Tensor, None, None]:
        n = float(2**ctx.k - 1)
        m = dr.abs().amax(dim=tuple(range(1, dr.dim())), keepdim=True) if dr.dim() > 1 else dr.abs()
        safe = torch.where(m > 0, m, torch.ones_like(m))
        u = torch.rand(dr.shape, generator=ctx.generator, dtype=dr.dtype, device=dr.device)
        noisy = dr / (2 * safe) + 0.5 + (u - 0.5) / n
        q = torch.round(noisy * n).clamp(0, n) / n
        return torch.where(m > 0, 2 * safe * (q - 0.5), torch.zeros_like(dr)), None, None


def dorefa_gradient(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Identity forward, DoReFa's k-bit stochastic gradient quantization backward (arXiv 1606.06160, eq. 12).

    The incoming gradient ``dr`` becomes ``2·max₀|dr|·[quantize_k(dr/(2·max₀|dr|) + ½ + N(k)) − ½]`` with
    ``max₀`` the max over every axis but the first (per sample; for a 1-d tensor per element) and
    ``N(k) = (u − ½)/(2^k − 1)``, ``u = torch.rand(dr.shape, generator=generator)``. The rounded value is
    clipped to ``[0, 2^k − 1]`` (a no-op up to float rounding, as in the authors' code); a sample whose
    gradient is all zero keeps a zero gradient. ``generator=None`` draws from torch's global RNG (so
    ``seed_everything`` makes it reproducible). ``k = 32``: the gradient is left unchanged.
    """
    if _check_k(k) == DOREFA_MAX_BITS:
        return x
    out: Tensor = _DoReFaGradient.apply(x, k, generator)
    return out


# ------------------------------------------------------------------------------------ binary weights


def binaryconnect(
    w: Tensor, stochastic: bool = False, generator: torch.Generator | None = None, h: float = 1.0
) -> Tensor:
    """BinaryConnect's binary weights ``±H`` (Courbariaux et al., arXiv 1511.00363, eq. 1 and 2).

    Deterministic: ``w_b = +H if w ≥ 0 else −H``. Stochastic: ``w_b = +H`` with probability
    ``σ(w/H) = clip((w/H + 1)/2, 0, 1)`` (hard sigmoid), else ``−H``, drawn as ``u < σ`` with
    ``u = torch.rand(w.shape, generator=generator)`` (global RNG when None). ``H = 1`` is the paper's formula;
    the authors' code uses a per-layer ``H`` (Glorot's ``√(1.5/(fan_in + fan_out))``) so that weights at
    their initial scale are not coin flips. Gradient: the identity, the gradient at ``w_b`` updates the real
    weight (which the caller clips to ``[−H, H]`` after each step).
    """
    _check_bool("stochastic", stochastic)
    if not h > 0:
        raise ValueError(f"`h` must be > 0, got {h!r}")
    if not stochastic:
        return _straight_through(w, lambda v: _ones_where(v >= 0, v) * h)

    def sample(v: Tensor) -> Tensor:
        p = torch.clamp((v / h + 1) / 2, 0.0, 1.0)
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return _ones_where(u < p, v) * h

    return _straight_through(w, sample)


class _BinaryNetSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, h: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.h = h
        return _ones_where(x >= 0, x) * h

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.h), None


def binarynet_sign(x: Tensor, h: float = 1.0) -> Tensor:
    """BinaryNet's sign (Hubara, Courbariaux et al., arXiv 1602.02830, eq. 1 and 4), at scale ``H``.

    Forward ``+H if x ≥ 0 else −H``; backward ``g_x = g_q · 1[|x| ≤ H]`` (STE cancelled outside [−H, H]).
    ``H = 1`` is the paper's (and the rule for activations); weights may use a per-layer ``H`` (the authors'
    code: Glorot's ``√(1.5/(fan_in + fan_out))``, with the real weights clipped to ``[−H, H]``).
    """
    if not h > 0:
        raise ValueError(f"`h` must be > 0, got {h!r}")
    out: Tensor = _BinaryNetSign.apply(x, h)
    return out
