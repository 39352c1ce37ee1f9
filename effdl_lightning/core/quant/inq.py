"""Incremental Network Quantization (Zhou et al. 2017, arXiv 1702.03044) as plain PyTorch.

INQ constrains each layer's weights to powers of two or zero,

    P_l = {±2^n1, …, ±2^n2, 0},   n1 = floor(log2(4·s/3)),   s = max|W_l|,   n2 = n1 + 1 − 2^(b−1)/2,

with ``b`` bits per weight: one bit for zero (the paper's reading), ``b − 1`` bits for the ``2^(b−1)``
signed powers, so ``2^(b−1)/2 = 2^(b−2)`` exponents ``n2 … n1`` (``b = 5``: 8 exponents, 17 values). Each
weight goes to the nearest level in the paper's sense (its eq. 4): with ``α`` and ``β`` adjacent elements of
the sorted non-negative levels ``0 < 2^n2 < … < 2^n1``,

    Ŵ(i, j) = β·sgn(W(i, j))   if (α + β)/2 ≤ |W(i, j)| < 3β/2,   else 0.

So ``|w| < 2^(n2−1)`` (half the smallest power) goes to 0, and the intervals ``[3β/4, 3β/2)`` tile the rest.
``n1`` is chosen so that ``max|W| < 3·2^n1/2``; once ``n1`` is fixed (:class:`PowerOfTwoQuantizer`, or the
INQ callback at its first step) later weights above that bound saturate at ``±2^n1`` (the paper never meets
them: it derives ``n1`` from the weights it quantizes).

The thresholds ``2^(n2−1)`` and ``3·2^(n−2)`` are exact in floating point and compared with ``|w|`` directly
(``torch.bucketize``), so the rule holds exactly at the interval ends, ties going up as in eq. 4.

The weights are quantized in growing portions (:func:`partition_masks`; the paper's 50 %, 75 %, 87.5 %,
100 %), the largest first ("pruning-inspired"), and only the not-yet-quantized weights are retrained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BITS_RANGE",
    "PARTITION_STRATEGIES",
    "PowerOfTwoQuantizer",
    "partition_masks",
    "power_of_two_codes",
    "power_of_two_decode",
    "power_of_two_levels",
    "power_of_two_n1",
    "power_of_two_quantize",
]

#: inclusive range of bit widths (b = 1 has no power; above 8 the smallest powers leave float32's range)
BITS_RANGE = (2, 8)
#: how :func:`partition_masks` chooses the next weights to quantize
PARTITION_STRATEGIES = ("magnitude", "random")


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
        raise ValueError(f"bits must be an int in [{BITS_RANGE[0]}, {BITS_RANGE[1]}], got {bits!r}")
    return bits


def _num_powers(bits: int) -> int:
    """``2^(b−1)/2``: how many exponents ``n2 … n1`` a ``b``-bit INQ weight has."""
    return 2 ** (_check_bits(bits) - 2)


def power_of_two_n1(max_abs: float) -> int:
    """``n1 = floor(log2(4·s/3))`` for ``s = max|W|``, exact at powers of two (0 for an all-zero tensor).

    ``2^n1 ≤ 4s/3`` ⇔ ``3·2^(n1−2) ≤ s``: the float estimate is corrected with that exact comparison.
    """
    s = float(max_abs)
    if not math.isfinite(s):
        raise ValueError(f"max|W| must be finite, got {s}")
    if s <= 0.0:
        return 0
    n1 = math.floor(math.log2(4.0 * s / 3.0))
    while math.ldexp(3.0, n1 - 2) > s:
        n1 -= 1
    while math.ldexp(3.0, n1 - 1) <= s:
        n1 += 1
    return n1


def power_of_two_levels(weight: Tensor, bits: int) -> tuple[int, int, Tensor]:
    """The INQ level set of ``weight`` at ``bits`` bits (arXiv 1702.03044, Section 2.1).

    ``n1 = floor(log2(4·max|W|/3))``, ``n2 = n1 + 1 − 2^(b−1)/2``, levels ``{±2^n : n2 ≤ n ≤ n1} ∪ {0}``.
    E.g. ``max|W| = 0.9``, ``b = 5``: ``n1 = floor(log2(1.2)) = 0``, ``n2 = 0 + 1 − 8 = −7``.

    Returns:
        ``(n1, n2, levels)`` with ``levels`` sorted ascending (``2·2^(b−2) + 1`` values) in ``weight``'s dtype.
    """
    k = _num_powers(bits)
    n1 = power_of_two_n1(float(weight.detach().abs().max())) if weight.numel() else 0
    n2 = n1 + 1 - k
    return n1, n2, _levels(n1, bits, weight.dtype, weight.device)


def _levels(n1: int, bits: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = _num_powers(bits)
    powers = [math.ldexp(1.0, n) for n in range(n1 + 1 - k, n1 + 1)]
    values = [-p for p in reversed(powers)] + [0.0] + powers
    return torch.tensor(values, dtype=dtype, device=device)


def _thresholds(n1: int, bits: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Lower ends ``(α + β)/2`` of the intervals of ``β = 2^n2 … 2^n1``: ``2^(n2−1)``, then ``3·2^(n−2)``."""
    k = _num_powers(bits)
    n2 = n1 + 1 - k
    ends = [math.ldexp(1.0, n2 - 1)] + [math.ldexp(3.0, n - 2) for n in range(n2 + 1, n1 + 1)]
    return torch.tensor(ends, dtype=dtype, device=device)


def power_of_two_codes(weight: Tensor, bits: int, n1: int) -> Tensor:
    """Integer codes of the INQ quantization of ``weight`` with a fixed ``n1`` (eq. 4).

    Code 0 is zero; code ``±(k + 1)`` is ``±2^(n2 + k)``, ``k = 0 … 2^(b−2) − 1`` (the exponent's index from
    the smallest power), so codes lie in ``[−2^(b−2), 2^(b−2)]``. Magnitudes at or above ``3·2^n1/2`` saturate
    at code ``±2^(b−2)``.
    """
    w = weight.detach()
    # at least float32: float16 would flush the smallest thresholds to 0 (and so move zeros off zero)
    magnitude = w.abs().to(torch.promote_types(w.dtype, torch.float32))
    index = torch.bucketize(magnitude, _thresholds(n1, bits, magnitude.dtype, w.device), right=True)
    return torch.where(w < 0, -index, index).to(torch.int64)


def power_of_two_decode(codes: Tensor, bits: int, n1: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Values of :func:`power_of_two_codes`' codes: ``sgn(c)·2^(n2 + |c| − 1)``, 0 for ``c = 0``."""
    k = _num_powers(bits)
    if codes.numel() and int(codes.abs().max()) > k:
        raise ValueError(f"codes must lie in [{-k}, {k}] for bits={bits}, got {int(codes.abs().max())}")
    table = _levels(n1, bits, dtype, codes.device)  # table[k + c] is the value of code c
    return table[codes.long() + k]


def power_of_two_quantize(weight: Tensor, bits: int, n1: int | None = None) -> Tensor:
    """INQ's power-of-two quantization of ``weight`` (eq. 4), with ``n1`` from ``weight`` unless given.

    Returns a new tensor (no gradient) whose values are in :func:`power_of_two_levels`' set; zero stays zero.
    """
    if n1 is None:
        n1 = power_of_two_levels(weight, bits)[0]
    return power_of_two_decode(power_of_two_codes(weight, bits, n1), bits, n1, weight.dtype)


class PowerOfTwoQuantizer(nn.Module):
    """Fake quantizer to INQ's power-of-two levels with a straight-through (identity) gradient.

    ``n1`` depends on ``max|W|``: it is derived from the first tensor the quantizer sees (or the one given
    to :meth:`freeze`) and kept in the buffer ``n1``, so later calls — after the weights moved — use the
    same levels, as INQ fixes each layer's levels before retraining. ``unfreeze()`` forgets it (the next
    call derives it again). Both buffers are in the module's ``state_dict``.

    Args:
        bits: ``b`` in ``[2, 8]``: ``2^(b−2)`` powers of two per sign plus zero.
    """

    n1: Tensor
    initialized: Tensor

    def __init__(self, bits: int = 5) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.enabled = True
        self.register_buffer("n1", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def code_range(self) -> tuple[int, int]:
        """Inclusive ``(min, max)`` of :meth:`codes`: ``(−2^(b−2), 2^(b−2))``."""
        k = _num_powers(self.bits)
        return -k, k

    def freeze(self, x: Tensor | None = None) -> None:
        """Fix ``n1`` from ``x`` (overriding a previous one); without ``x`` keep the current ``n1``."""
        if x is not None:
            n1 = power_of_two_n1(float(x.detach().abs().max())) if x.numel() else 0
            self.n1.fill_(n1)
            self.initialized.fill_(True)

    def unfreeze(self) -> None:
        """Forget ``n1``: the next call derives it from its input."""
        self.initialized.fill_(False)

    def _n1(self, x: Tensor) -> int:
        if not bool(self.initialized):
            self.freeze(x)
        return int(self.n1)

    def levels(self) -> Tensor:
        """The sorted level set of the fixed ``n1`` (float32)."""
        if not bool(self.initialized):
            raise RuntimeError("PowerOfTwoQuantizer has no n1 yet: call it or freeze(x) first")
        return _levels(int(self.n1), self.bits, torch.float32, self.n1.device)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` quantized to the levels (exactly), with the gradient of the identity; ``x`` if disabled."""
        if not self.enabled:
            return x
        q = power_of_two_quantize(x, self.bits, self._n1(x))
        return (x - x.detach()) + q  # value: 0 + q, exactly q; gradient: identity

    def codes(self, x: Tensor) -> Tensor:
        """int64 codes of ``x`` (see :func:`power_of_two_codes`); ``decode(codes(x)) == forward(x)``."""
        return power_of_two_codes(x, self.bits, self._n1(x))

    def decode(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Values of ``codes`` at the fixed ``n1``."""
        if not bool(self.initialized):
            raise RuntimeError("PowerOfTwoQuantizer has no n1 yet: call it or freeze(x) first")
        return power_of_two_decode(codes, self.bits, int(self.n1), dtype)

    def config(self) -> dict[str, Any]:
        """Plain data that rebuilds this quantizer: ``{"type": "PowerOfTwoQuantizer", "bits": b}``."""
        return {"type": type(self).__name__, "bits": self.bits}

    def extra_repr(self) -> str:
        n1 = int(self.n1) if bool(self.initialized) else None
        return f"bits={self.bits}, n1={n1}, enabled={self.enabled}"


def partition_masks(
    weights: Mapping[str, Tensor],
    fraction: float,
    strategy: str = "magnitude",
    already: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """INQ's weight partition: per layer, the mask (True = quantized) after growing it to ``fraction``.

    Each layer gets ``max(round(fraction·numel), |already|)`` quantized elements: the ones in ``already``
    (never un-quantized) plus, among the rest, the largest ``|w|`` for ``"magnitude"`` (the paper's
    "pruning-inspired" partition, arXiv 1702.03044 Section 2.2) or uniformly random ones for ``"random"``.

    Args:
        weights: ``{name: tensor}`` to partition.
        fraction: accumulated portion of each layer to quantize, in ``[0, 1]``.
        strategy: ``"magnitude"`` or ``"random"``.
        already: the masks so far (missing names: nothing quantized yet).
        generator: the random generator of ``"random"`` (seed it identically on every rank).
    """
    if strategy not in PARTITION_STRATEGIES:
        raise ValueError(f"strategy must be one of {PARTITION_STRATEGIES}, got {strategy!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out: dict[str, Tensor] = {}
    for name, w in weights.items():
        if strategy == "magnitude":
            scores = w.detach().abs().float()
        else:
            scores = torch.rand(w.shape, generator=generator, device="cpu").to(w.device)
        before = already.get(name) if already is not None else None
        count = round(fraction * w.numel())
        if before is not None:
            before = before.to(device=w.device, dtype=torch.bool)
            scores = scores.masked_fill(before, float("inf"))
            count = max(count, int(before.sum()))
        flat = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        if count > 0:
            flat[torch.topk(scores.reshape(-1), count, largest=True, sorted=False).indices] = True
        out[name] = flat.view(w.shape)
    return out
