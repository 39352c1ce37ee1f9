"""MobileNetV1 (Howard et al., arXiv 1704.04861) and MobileNetV2 (Sandler et al., arXiv 1801.04381).

Both are block strings (see :mod:`effdl_lightning.models.blocks`) scaled by the width multiplier α,
whose channels are rounded to multiples of 8 (for α ∈ {0.25, 0.5, 0.75, 1} this is exactly α·c, as in
the papers). Resolution is the input's: ``input_shape=(3, 160, 160)`` is "MobileNet-160".

Cost at 3×224×224, 1,000 classes (MACs of convs and the linear layer, ``effdl_lightning.measure``):

================  ===========  ===========  =====================================================
model             MACs         params       paper (arXiv 1704.04861 Table 6-7 / 1801.04381 Table 4)
================  ===========  ===========  =====================================================
MobileNetV1 1.0   568.7M       4.23M        569M / 4.2M
MobileNetV1 0.5   149.5M       1.33M        149M / 1.3M
MobileNetV2 1.0   300.8M       3.50M        300M / 3.4M (TF-slim table: 3.47M = ours without BN)
================  ===========  ===========  =====================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from effdl_lightning.models.blocks import (
    ConvBnAct,
    ConvClassifier,
    build_stages,
    image_shape,
    make_divisible,
    use_small_input,
)
from effdl_lightning.models.registry import register_model

# Table 1 of arXiv 1704.04861: 13 depthwise-separable layers; "dsa" = ReLU after both convs, no residual.
# (The table's second-to-last dw layer says s2, but its input and output are both 7×7: it is stride 1.)
MOBILENET_V1_ARCH: list[list[str]] = [
    ["dsa_r1_k3_s1_c64"],
    ["dsa_r1_k3_s2_c128", "dsa_r1_k3_s1_c128"],
    ["dsa_r1_k3_s2_c256", "dsa_r1_k3_s1_c256"],
    ["dsa_r1_k3_s2_c512", "dsa_r5_k3_s1_c512"],
    ["dsa_r1_k3_s2_c1024", "dsa_r1_k3_s1_c1024"],
]

# Table 2 of arXiv 1801.04381 (t = expansion, c = channels, n = repeats, s = stride); first block t=1.
MOBILENET_V2_ARCH: list[list[str]] = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]


def _check_width(width_mult: float) -> None:
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")


@register_model("mobilenet_v1", default_input_shape=(1, 28, 28), default_num_classes=10)
class MobileNetV1(ConvClassifier):
    """MobileNetV1: a 3×3 stem then 13 depthwise-separable layers (arXiv 1704.04861).

    A standard k×k conv of M→N channels costs ``k²·M·N·H·W`` MACs; the depthwise-separable pair costs
    ``k²·M·H·W + M·N·H·W``, i.e. ``1/N + 1/k²`` of it (≈ 8-9× fewer for 3×3).

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels, H×W the resolution multiplier ρ.
        width_mult: the width multiplier α (0.25, 0.5, 0.75, 1.0 in the paper).
        small_input: use the small-input stem (stem and first stride-2 layer at stride 1, overall
            stride 8 instead of 32); ``None`` chooses it when the shorter side is under 64 px.
        dropout: dropout before the classifier (the paper's models use none).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        width_mult: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        _check_width(width_mult)
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        stem_chs = make_divisible(32 * width_mult)
        stem = ConvBnAct(in_chans, stem_chs, 3, stride=1 if small else 2, act="relu")
        stages, out_chs = build_stages(
            MOBILENET_V1_ARCH, stem_chs, act="relu", width_mult=width_mult, unstrided=1 if small else 0
        )
        super().__init__(stem, stages, nn.Identity(), out_chs, num_classes, dropout)
        self.width_mult = width_mult
        self.small_input = small


@register_model("mobilenet_v2", default_input_shape=(3, 32, 32), default_num_classes=10)
class MobileNetV2(ConvClassifier):
    """MobileNetV2: inverted residuals with linear bottlenecks and ReLU6 (arXiv 1801.04381).

    Each block expands ``c_in → t·c_in`` with a 1×1 conv, filters with a 3×3 depthwise conv and projects
    back with a *linear* 1×1 conv (no ReLU: a ReLU on a low-dimensional manifold destroys information);
    the residual joins the thin bottlenecks. The final 1×1 conv has ``1280·max(1, α)`` channels.

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels.
        width_mult: width multiplier α (channels rounded to multiples of 8; 0.35-1.4 in the paper).
        small_input: small-input stem (stem and the first stride-2 stage at stride 1, overall stride 8);
            ``None`` chooses it when the shorter side is under 64 px.
        dropout: dropout before the classifier (0.2 in the reference training code).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        width_mult: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.2,
    ) -> None:
        _check_width(width_mult)
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        stem_chs = make_divisible(32 * width_mult)
        stem = ConvBnAct(in_chans, stem_chs, 3, stride=1 if small else 2, act="relu6")
        stages, out_chs = build_stages(
            MOBILENET_V2_ARCH, stem_chs, act="relu6", width_mult=width_mult, unstrided=1 if small else 0
        )
        num_features = make_divisible(1280 * max(1.0, width_mult))
        head = ConvBnAct(out_chs, num_features, 1, act="relu6")
        super().__init__(stem, stages, head, num_features, num_classes, dropout)
        self.width_mult = width_mult
        self.small_input = small
