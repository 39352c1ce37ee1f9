"""MnasNet-A1 (Tan et al., arXiv 1807.11626), written in the shared block strings.

MnasNet-A1 is the searched mobile model of Fig. 7 of the paper: MBConv stages with 3×3/5×5 kernels,
expansion 3 or 6 and SE in three stages; ReLU throughout. Block strings follow the reference
``mnasnet_models.mnasnet_a1`` (tensorflow/tpu) as timm does. At 3×224×224, 1,000 classes:
311.6M MACs, 3.89M params; paper (Table 1): 312M multiply-adds, 3.9M params.

Because it is plain data, a NAS result in the same format builds with the same code (``arch=...``).
"""

from __future__ import annotations

from collections.abc import Sequence

from effdl_lightning.models.blocks import (
    ConvBnAct,
    ConvClassifier,
    build_stages,
    image_shape,
    make_divisible,
    use_small_input,
)
from effdl_lightning.models.registry import register_model

MNASNET_A1_ARCH: list[list[str]] = [
    ["ds_r1_k3_s1_e1_c16_noskip"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k5_s2_e3_c40_se0.25"],
    ["ir_r4_k3_s2_e6_c80"],
    ["ir_r2_k3_s1_e6_c112_se0.25"],
    ["ir_r3_k5_s2_e6_c160_se0.25"],
    ["ir_r1_k3_s1_e6_c320"],
]


@register_model("mnasnet_a1", default_input_shape=(3, 32, 32), default_num_classes=10)
class MnasNetA1(ConvClassifier):
    """MnasNet-A1, or any block-string architecture with a 3×3 stem and a 1×1 head (arXiv 1807.11626).

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels.
        width_mult: the paper's "depth multiplier": every layer's channels, head included, become
            ``make_divisible(c·w, 8)`` (the reference ``round_filters``).
        small_input: small-input stem (stem and the first stride-2 stage at stride 1, overall stride 8);
            ``None`` chooses it when the shorter side is under 64 px.
        dropout: dropout before the classifier (0.2 in the reference code).
        arch: stages of block strings (default: MnasNet-A1), e.g. a searched architecture.
        act: default activation of the blocks, stem and head.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        width_mult: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.2,
        arch: Sequence[Sequence[str]] | None = None,
        act: str = "relu",
    ) -> None:
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        stem_chs = make_divisible(32 * width_mult)
        stem = ConvBnAct(in_chans, stem_chs, 3, stride=1 if small else 2, act=act)
        stages, out_chs = build_stages(
            MNASNET_A1_ARCH if arch is None else arch,
            stem_chs,
            act=act,
            width_mult=width_mult,
            unstrided=1 if small else 0,
        )
        num_features = make_divisible(1280 * width_mult)
        head = ConvBnAct(out_chs, num_features, 1, act=act)
        super().__init__(stem, stages, head, num_features, num_classes, dropout)
        self.width_mult = width_mult
        self.small_input = small
