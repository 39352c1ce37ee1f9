"""The candidate operations of the DARTS cell search space (Liu et al. 2019, arXiv 1806.09055, §3.1).

Every operation maps ``C`` channels to ``C`` channels; with ``stride=2`` it halves the spatial size to
``ceil(H/2) × ceil(W/2)`` (odd sizes included, so 28×28 → 14 → 7 and 7 → 4 work). Convolutions are
``ReLU → conv → BN``; a separable conv is that pair applied twice (as in the paper's code); ``none`` is the
zero operation and ``skip_connect`` with stride 2 is a factorized reduction (two offset 1×1 stride-2 convs,
concatenated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DARTS_OPS",
    "DilConv",
    "FactorizedReduce",
    "ReLUConvBN",
    "SepConv",
    "Zero",
    "build_op",
    "check_ops",
]

#: the 8 operations of the paper's CNN search space, in the reference code's order
DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    """``ReLU → k×k conv (no bias) → BN``: the cells' input preprocessing and the stem of every conv op."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """``ReLU → depthwise k×k conv with dilation → 1×1 conv → BN`` (dilated separable conv)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convs (``ReLU → dw k×k → 1×1 → BN``), the first with ``stride``."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output's shape (stride 2: ``ceil(H/2) × ceil(W/2)``)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size without losing pixels: ``ReLU``, then two 1×1 stride-2 convs, the second on the
    input shifted by one pixel, concatenated along channels, then BN.

    The shifted path pads the bottom/right by one pixel, so that both paths give ``ceil(H/2) × ceil(W/2)``
    on odd sizes too (on even sizes the pad is never read: the result equals the reference code's).
    ``c_out`` may be odd (the first path gets ``c_out // 2`` channels).
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


OpFactory = Callable[[int, int, bool], nn.Module]

_OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "skip_connect": lambda c, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)
    ),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine=affine),
}


def check_ops(ops: Iterable[str] | None, *, need_non_zero: bool = True) -> tuple[str, ...]:
    """Validate an operation set: known names, no duplicates, at least one op that is not ``none``.

    ``None`` means all of :data:`DARTS_OPS`. Raises ``ValueError`` naming the bad value and the allowed set.
    """
    names = DARTS_OPS if ops is None else tuple(str(o) for o in ops)
    unknown = [o for o in names if o not in _OPS]
    if unknown:
        raise ValueError(f"unknown DARTS operation(s) {unknown}; allowed: {list(DARTS_OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"the operation set has duplicates: {list(names)}")
    if need_non_zero and not [o for o in names if o != "none"]:
        raise ValueError(f"the operation set needs at least one operation besides 'none', got {list(names)}")
    return names


def build_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build operation ``name`` (one of :data:`DARTS_OPS`) on ``channels`` channels with ``stride`` 1 or 2.

    ``affine=False`` (the search network) gives BN layers without learnable scale and shift.
    """
    if name not in _OPS:
        raise ValueError(f"unknown DARTS operation {name!r}; allowed: {list(DARTS_OPS)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return _OPS[name](int(channels), int(stride), bool(affine))
