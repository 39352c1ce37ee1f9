"""The network of the platform-aware search space: a fixed MobileNetV2-style skeleton with per-stage choices.

MnasNet (Tan et al., arXiv 1807.11626) searches a *factorized hierarchical* space: the network is a fixed
sequence of stages (input resolution and base filter count fixed per stage) and each stage chooses its own
layer: kernel size, expansion, squeeze-excite, number of layers, output filters; all layers of a stage are
the same. This module is that network for small inputs (28×28 MNIST, 32×32 CIFAR), built from the shared
MBConv blocks (:class:`~effdl_lightning.models.blocks.InvertedResidual`) and written as block strings, so a
searched architecture is plain data::

    stem   cn 3×3 stride 2 → 8 ch                  (28×28 → 14×14)
    s1     MBConv ×layers, stride 1, 8·width ch    (14×14)
    s2     MBConv ×layers, stride 2, 16·width ch   (→ 7×7)
    s3     MBConv ×layers, stride 2, 24·width ch   (→ 4×4)
    s4     MBConv ×layers, stride 1, 32·width ch   (4×4)
    head   cn 1×1 → 64 ch, global average pool, linear classifier

The skeleton is MobileNetV2's stage pattern at a quarter to half of its width, sized so that a candidate
trains for a few dozen steps in seconds on one CPU thread (the search trains hundreds of them).

Each stage is a mapping ``{kernel, expansion, se, layers, width}``; the first layer of a stage carries its
stride and channel change, the others are stride 1 with a residual. :func:`plan_mnas_space` lists every
part (stem, each layer, head) with its input shape: the latency table of the search times exactly these
parts, and the network is built from the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effdl_lightning.models.blocks import (
    ConvBnAct,
    ConvClassifier,
    InvertedResidual,
    image_shape,
    make_block,
    make_divisible,
    parse_block,
)
from effdl_lightning.models.registry import register_model

#: the per-stage choices, in the order a stage mapping lists them
STAGE_FIELDS = ("kernel", "expansion", "se", "layers", "width")
#: a MobileNetV2-style stage (3×3, expansion 6, no SE, 2 layers): the default of every stage
MOBILENET_V2_STAGE: dict[str, Any] = {"kernel": 3, "expansion": 6, "se": False, "layers": 2, "width": 1.0}
#: base output channels and first-layer stride of the four stages (overall stride 8 with the stem)
DEFAULT_CHANNELS = (8, 16, 24, 32)
DEFAULT_STRIDES = (1, 2, 2, 1)


@dataclass(frozen=True)
class PlannedBlock:
    """One part of the network as plain data: the stem, one layer of a stage, or the head.

    ``block`` is a block string of :mod:`effdl_lightning.models.blocks` (one repeat, channels final);
    ``in_shape`` is the part's input ``(channels, height, width)``. The head includes pooling and the
    classifier. :attr:`key` names the configuration in a latency table.
    """

    part: str
    block: str
    in_shape: tuple[int, int, int]
    out_chs: int
    stride: int

    @property
    def key(self) -> str:
        """``<part>/<block string>@<C>x<H>x<W>``, e.g. ``s2/ir_r1_k5_s2_e3_c24_se0.25@16x14x14``."""
        return f"{self.part}/{self.block}@{'x'.join(str(d) for d in self.in_shape)}"


def _stage_list(stages: Mapping[str, Any] | Sequence[Any], num_stages: int) -> list[dict[str, Any]]:
    """Normalize the stage choices (a mapping ``s1..sN -> choices`` or a list) to a list of full dicts."""
    if isinstance(stages, Mapping):
        expected = [f"s{i + 1}" for i in range(num_stages)]
        if sorted(stages) != sorted(expected):
            raise ValueError(f"stages must have the keys {expected}; got {sorted(stages)}")
        items = [stages[key] for key in expected]
    else:
        items = list(stages)
        if len(items) != num_stages:
            raise ValueError(
                f"stages must list {num_stages} stages (one per skeleton stage); got {len(items)}"
            )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"stage s{i + 1} must be a mapping of {STAGE_FIELDS}; got {item!r}")
        unknown = sorted(set(item) - set(STAGE_FIELDS))
        if unknown:
            raise ValueError(f"stage s{i + 1}: unknown field(s) {unknown}; allowed: {list(STAGE_FIELDS)}")
        choice = {**MOBILENET_V2_STAGE, **item}
        if int(choice["kernel"]) < 1 or int(choice["kernel"]) % 2 == 0:
            raise ValueError(f"stage s{i + 1}: kernel must be a positive odd integer; got {choice['kernel']}")
        if not float(choice["expansion"]) >= 1.0:
            raise ValueError(f"stage s{i + 1}: expansion must be >= 1; got {choice['expansion']}")
        if int(choice["layers"]) < 1:
            raise ValueError(f"stage s{i + 1}: layers must be >= 1; got {choice['layers']}")
        if not float(choice["width"]) > 0:
            raise ValueError(f"stage s{i + 1}: width must be > 0; got {choice['width']}")
        out.append(choice)
    return out


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # "same" padding k // 2 with an odd kernel


def plan_mnas_space(
    stages: Mapping[str, Any] | Sequence[Any],
    input_shape: Sequence[int] = (1, 28, 28),
    *,
    stem_channels: int = 8,
    stem_stride: int = 2,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    strides: Sequence[int] = DEFAULT_STRIDES,
    head_channels: int = 64,
    se_ratio: float = 0.25,
) -> list[PlannedBlock]:
    """Every part of the network for ``stages``, in forward order (arguments as in :class:`MnasSpaceNet`)."""
    if len(channels) != len(strides):
        raise ValueError(f"channels and strides must have one entry per stage; got {channels} and {strides}")
    choices = _stage_list(stages, len(channels))
    c, h, w = image_shape(input_shape)
    plan = [
        PlannedBlock(
            "stem", f"cn_r1_k3_s{stem_stride}_c{stem_channels}", (c, h, w), stem_channels, stem_stride
        )
    ]
    c, h, w = stem_channels, _out_size(h, stem_stride), _out_size(w, stem_stride)
    for i, (choice, base, stride) in enumerate(zip(choices, channels, strides, strict=True)):
        out = make_divisible(base * float(choice["width"]))
        se = f"_se{se_ratio:g}" if choice["se"] and se_ratio > 0 else ""
        for layer in range(int(choice["layers"])):
            s = int(stride) if layer == 0 else 1
            block = f"ir_r1_k{int(choice['kernel'])}_s{s}_e{float(choice['expansion']):g}_c{out}{se}"
            plan.append(PlannedBlock(f"s{i + 1}", block, (c, h, w), out, s))
            c, h, w = out, _out_size(h, s), _out_size(w, s)
    plan.append(PlannedBlock("head", f"cn_r1_k1_s1_c{head_channels}", (c, h, w), head_channels, 1))
    return plan


class PooledClassifier(nn.Module):
    """The head as one unit: 1×1 conv-bn-act → global average pool → dropout → linear."""

    def __init__(self, conv: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = conv
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.conv(x).mean((2, 3)), 1)))


def build_planned_block(block: PlannedBlock, act: str = "relu", num_classes: int = 10) -> nn.Module:
    """The module that computes one planned part (the head with its pooling and classifier)."""
    spec = parse_block(block.block)
    conv = make_block(spec, block.in_shape[0], block.out_chs, block.stride, act)
    if block.part == "head":
        return PooledClassifier(conv, block.out_chs, num_classes)
    return conv


@register_model("mnas_space", default_input_shape=(1, 28, 28), default_num_classes=10)
class MnasSpaceNet(ConvClassifier):
    """One network of the platform-aware search space (module docstring; MnasNet, arXiv 1807.11626).

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels.
        stages: per-stage choices, a mapping ``{"s1": {...}, ..., "sN": {...}}`` (or a list), each with
            ``kernel`` (odd), ``expansion`` (≥ 1; 1 drops the expansion conv), ``se`` (squeeze-excite of
            ``se_ratio`` × the layer's input channels), ``layers`` (≥ 1) and ``width`` (multiplier of the
            stage's base channels, rounded to multiples of 8); a missing field takes the MobileNetV2-style
            default :data:`MOBILENET_V2_STAGE`. ``None``: every stage MobileNetV2-style.
        stem_channels: output channels of the 3×3 stem.
        stem_stride: stride of the stem.
        channels: base output channels of each stage (the skeleton).
        strides: stride of each stage's first layer (the skeleton).
        head_channels: channels of the 1×1 conv before pooling.
        se_ratio: squeeze-excite reduction, as a fraction of a layer's input channels (0.25 in MnasNet).
        act: activation of every block, stem and head.
        dropout: dropout before the classifier.
        zero_init_residual: start the last BatchNorm of every residual layer at zero, so each residual
            layer begins as the identity (Goyal et al., arXiv 1706.02677); briefly trained candidates learn
            faster from it.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        stages: Mapping[str, Any] | Sequence[Any] | None = None,
        stem_channels: int = 8,
        stem_stride: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[int] = DEFAULT_STRIDES,
        head_channels: int = 64,
        se_ratio: float = 0.25,
        act: str = "relu",
        dropout: float = 0.0,
        zero_init_residual: bool = True,
    ) -> None:
        if stages is None:
            stages = [dict(MOBILENET_V2_STAGE) for _ in channels]
        plan = plan_mnas_space(
            stages,
            input_shape,
            stem_channels=stem_channels,
            stem_stride=stem_stride,
            channels=channels,
            strides=strides,
            head_channels=head_channels,
            se_ratio=se_ratio,
        )
        stem = build_planned_block(plan[0], act)
        groups: dict[str, list[nn.Module]] = {}
        for block in plan[1:-1]:
            groups.setdefault(block.part, []).append(build_planned_block(block, act))
        body = nn.Sequential(*(nn.Sequential(*blocks) for blocks in groups.values()))
        head = ConvBnAct(plan[-1].in_shape[0], head_channels, 1, act=act)
        super().__init__(stem, body, head, head_channels, num_classes, dropout)
        if zero_init_residual:
            for module in self.stages.modules():
                if isinstance(module, InvertedResidual) and module.has_skip:
                    nn.init.zeros_(module.conv_pwl.bn.weight)
        self.plan = plan
        self.stage_choices = _stage_list(stages, len(channels))
