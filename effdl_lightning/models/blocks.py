"""Shared building blocks of the efficient architectures, and a short block-string format to stack them.

The MobileNet / MnasNet / EfficientNet family is written as *block strings* after timm's
``timm/models/_efficientnet_builder.py`` so that a searched architecture (NAS) is plain data::

    "ir_r2_k3_s2_e6_c24_se0.25"   # inverted residual, 2 repeats, 3×3 depthwise, stride 2 (first repeat
                                  # only), expansion 6, 24 output channels, squeeze-excite ratio 0.25

Tokens (joined by ``_``; the first is the block type):

- type: ``ds`` depthwise separable (dw → [SE] → linear pw, residual when shapes allow; MobileNetV2's and
  EfficientNet's first block), ``dsa`` depthwise separable with an activation after the pw conv and no
  residual (MobileNetV1), ``ir`` inverted residual with linear bottleneck (MobileNetV2, arXiv 1801.04381),
  ``cn`` plain conv-bn-act.
- ``r<int>`` repeats, ``k<int>`` kernel, ``s<int>`` stride of the first repeat, ``e<float>`` expansion,
  ``c<int>`` output channels (before the width multiplier), ``se<float>`` squeeze-excite ratio of the
  block's *input* channels (arXiv 1709.01507, as in the EfficientNet/MnasNet reference code),
  ``noskip`` no residual, ``n<act>`` activation override (``nre`` relu, ``nr6`` relu6, ``nsw`` swish,
  ``nhs`` hard-swish).

An architecture is a list of stages, each a list of block strings; :func:`build_stages` scales it by a
width multiplier (channels rounded by :func:`make_divisible`) and a depth multiplier
(``ceil(depth_mult · r)`` repeats per block string), the two knobs of compound scaling (arXiv 1905.11946).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "hswish": lambda: nn.Hardswish(inplace=True),
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
_ACT_TOKENS = {"re": "relu", "r6": "relu6", "sw": "swish", "hs": "hswish"}
BLOCK_TYPES = ("ds", "dsa", "ir", "cn")


def make_act(name: str) -> nn.Module:
    """Return a fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%.

    This is the rounding of the MobileNetV2 and EfficientNet reference code (``_make_divisible`` /
    ``round_filters``): ``max(min_value, int(v + d/2) // d · d)``, plus ``d`` if that lost over 10% of ``v``.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias, "same" padding) → BatchNorm2d → optional activation, as children ``conv/bn/act``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = make_act(act) if act is not None else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., arXiv 1709.01507): ``x · sigmoid(W2 act(W1 GAP(x)))``."""

    def __init__(self, chs: int, reduced_chs: int, act: str = "relu") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, reduced_chs, 1)
        self.act = make_act(act)
        self.conv_expand = nn.Conv2d(reduced_chs, chs, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


class DropPath(nn.Module):
    """Stochastic depth per sample ("drop connect" of the EfficientNet code, arXiv 1603.09382)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (arXiv 1707.01083): reshape to (g, C/g), transpose, flatten."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`, so graph tools see the permutation as a named layer."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k conv → [SE] → pointwise 1×1 conv (MobileNetV1, arXiv 1704.04861).

    Args:
        pw_act: apply the activation after the pointwise conv too (MobileNetV1); ``False`` keeps it
            linear (MobileNetV2's and EfficientNet's first block).
        se_ratio: squeeze-excite channels = ``max(1, int(in_chs · se_ratio))``; 0 disables SE.
        skip: add the input when the stride is 1 and the channel count is unchanged.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu",
        pw_act: bool = False,
        se_ratio: float = 0.0,
        skip: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.conv_dw = ConvBnAct(in_chs, in_chs, kernel_size, stride, groups=in_chs, act=act)
        self.se = (
            SqueezeExcite(in_chs, max(1, int(in_chs * se_ratio)), act) if se_ratio > 0 else nn.Identity()
        )
        self.conv_pw = ConvBnAct(in_chs, out_chs, 1, act=act if pw_act else None)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pw(self.se(self.conv_dw(x)))
        return x + self.drop_path(out) if self.has_skip else out


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (MobileNetV2, arXiv 1801.04381), the MBConv of MnasNet/EfficientNet.

    1×1 expand to ``in_chs · expand_ratio`` → depthwise k×k (stride) → [SE] → *linear* 1×1 projection,
    with a residual when the stride is 1 and the channel count is unchanged. SE reduces to
    ``max(1, int(in_chs · se_ratio))`` channels, as in the MnasNet/EfficientNet reference code.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        act: str = "relu6",
        se_ratio: float = 0.0,
        skip: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = round(in_chs * expand_ratio)
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.conv_pw = ConvBnAct(in_chs, mid, 1, act=act) if mid != in_chs else nn.Identity()
        self.conv_dw = ConvBnAct(mid, mid, kernel_size, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, max(1, int(in_chs * se_ratio)), act) if se_ratio > 0 else nn.Identity()
        self.conv_pwl = ConvBnAct(mid, out_chs, 1, act=None)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return x + self.drop_path(out) if self.has_skip else out


@dataclass(frozen=True)
class BlockSpec:
    """One block string, decoded. ``str(spec)`` writes it back in the same format."""

    block_type: str
    repeats: int = 1
    kernel_size: int = 3
    stride: int = 1
    expand_ratio: float = 1.0
    out_chs: int = 16
    se_ratio: float = 0.0
    skip: bool = True
    act: str | None = None

    def __str__(self) -> str:
        parts = [self.block_type, f"r{self.repeats}", f"k{self.kernel_size}", f"s{self.stride}"]
        parts += [f"e{self.expand_ratio:g}", f"c{self.out_chs}"]
        if self.se_ratio > 0:
            parts.append(f"se{self.se_ratio:g}")
        if not self.skip and self.block_type != "dsa":
            parts.append("noskip")
        if self.act is not None:
            parts.append("n" + {v: k for k, v in _ACT_TOKENS.items()}[self.act])
        return "_".join(parts)


_TOKEN = re.compile(r"^(r|k|s|e|c|se)(\d+(?:\.\d+)?)$")


def parse_block(block: str) -> BlockSpec:
    """Decode a block string such as ``"ir_r2_k3_s2_e6_c24_se0.25"`` (format in the module docstring)."""
    block_type, *tokens = block.split("_")
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"unknown block type {block_type!r} in {block!r}; expected one of {BLOCK_TYPES}")
    values: dict[str, float] = {}
    skip, act = block_type != "dsa", None
    for tok in tokens:
        if tok == "noskip":
            skip = False
        elif tok.startswith("n") and tok[1:] in _ACT_TOKENS:
            act = _ACT_TOKENS[tok[1:]]
        elif (m := _TOKEN.match(tok)) is not None:
            values[m.group(1)] = float(m.group(2))
        else:
            raise ValueError(f"cannot parse token {tok!r} of block {block!r}")
    if "c" not in values:
        raise ValueError(f"block {block!r} lacks its output channels 'c<int>'")
    return BlockSpec(
        block_type=block_type,
        repeats=int(values.get("r", 1)),
        kernel_size=int(values.get("k", 3)),
        stride=int(values.get("s", 1)),
        expand_ratio=values.get("e", 1.0),
        out_chs=int(values["c"]),
        se_ratio=values.get("se", 0.0),
        skip=skip,
        act=act,
    )


def make_block(
    spec: BlockSpec, in_chs: int, out_chs: int, stride: int, act: str, drop_path: float = 0.0
) -> nn.Module:
    """Build one repeat of ``spec`` (channels already scaled, stride of this repeat)."""
    act = spec.act or act
    k = spec.kernel_size
    if spec.block_type == "cn":
        return ConvBnAct(in_chs, out_chs, k, stride, act=act)
    if spec.block_type in ("ds", "dsa"):
        pw_act = spec.block_type == "dsa"
        return DepthwiseSeparable(
            in_chs, out_chs, k, stride, act, pw_act, spec.se_ratio, spec.skip, drop_path
        )
    return InvertedResidual(
        in_chs, out_chs, k, stride, spec.expand_ratio, act, spec.se_ratio, spec.skip, drop_path
    )


def build_stages(
    arch: Sequence[Sequence[str]],
    in_chs: int,
    *,
    act: str = "relu",
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    divisor: int = 8,
    drop_path_rate: float = 0.0,
    unstrided: int = 0,
) -> tuple[nn.Sequential, int]:
    """Stack an architecture given as stages of block strings.

    Args:
        arch: stages, each a list of block strings.
        in_chs: channels entering the first stage.
        act: default activation (a block's ``n<act>`` token overrides it).
        width_mult: channels ``make_divisible(c · width_mult, divisor)``.
        depth_mult: repeats ``ceil(r · depth_mult)`` per block string (EfficientNet's ``round_repeats``).
        drop_path_rate: stochastic depth of the last block; block i of N gets ``rate · i / N``.
        unstrided: the first ``unstrided`` stride-2 blocks get stride 1 (small-input stems).

    Returns:
        ``nn.Sequential`` of stages (each an ``nn.Sequential`` of blocks) and the output channel count.
    """
    specs = [[parse_block(b) for b in stage] for stage in arch]
    repeats = [[math.ceil(s.repeats * depth_mult) for s in stage] for stage in specs]
    total = sum(sum(r) for r in repeats)
    stages: list[nn.Module] = []
    idx, to_unstride = 0, unstrided
    for stage_specs, stage_repeats in zip(specs, repeats, strict=True):
        blocks: list[nn.Module] = []
        for spec, n in zip(stage_specs, stage_repeats, strict=True):
            out_chs = make_divisible(spec.out_chs * width_mult, divisor)
            for i in range(n):
                stride = spec.stride if i == 0 else 1
                if stride > 1 and to_unstride > 0:
                    stride, to_unstride = 1, to_unstride - 1
                blocks.append(make_block(spec, in_chs, out_chs, stride, act, drop_path_rate * idx / total))
                in_chs, idx = out_chs, idx + 1
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), in_chs


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a channels-first image shape without batch dimension, e.g. ``(3, 224, 224)``."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width) of positive sizes, got {shape}")
    return shape[0], shape[1], shape[2]


def use_small_input(small_input: bool | None, input_shape: Sequence[int]) -> bool:
    """Resolve the small-input stem switch; ``None`` means: small when the shorter side is under 64 px.

    The ImageNet stems downsample by 32 overall; the small-input variants keep the first two stride-2
    steps at stride 1 (overall 8), so 28×28 or 32×32 inputs still end with a 4×4 feature map.
    """
    if small_input is not None:
        return bool(small_input)
    _, h, w = image_shape(input_shape)
    return min(h, w) < 64


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit BatchNorm, N(0, 0.01) linear; zero biases (torchvision style)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class ConvClassifier(nn.Module):
    """The skeleton the efficient nets share: ``stem → stages → head → global pool → dropout → classifier``.

    Every model here exposes ``forward_features`` (the last feature map) and ``forward_head`` (pool,
    dropout, linear), like timm's models, so distillation and early-exit code can hook either part.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: nn.Sequential,
        head: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.stem = stem
        self.stages = stages
        self.head = head
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(x.mean((2, 3)), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
