"""EfficientNet B0-B7 by compound scaling (Tan & Le, arXiv 1905.11946).

Compound scaling grows depth ``d = α^φ``, width ``w = β^φ`` and resolution ``r = γ^φ`` together, with
``α·β²·γ² ≈ 2`` so FLOPs grow ≈ 2^φ; the paper's grid search on B0 gave α = 1.2, β = 1.1, γ = 1.15.
Channels are rounded with ``make_divisible(c·w, 8)`` (the reference ``round_filters``) and repeats with
``ceil(d·n)`` (``round_repeats``).

Two ways to pick a model:

* ``variant="b0"`` … ``"b7"`` uses the per-variant table of the reference implementation
  (``efficientnet_builder.efficientnet_params`` in tensorflow/tpu) — these coefficients *are* the
  released B1-B7: (width, depth, resolution, dropout) = b0 (1.0, 1.0, 224, 0.2), b1 (1.0, 1.1, 240, 0.2),
  b2 (1.1, 1.2, 260, 0.3), b3 (1.2, 1.4, 300, 0.3), b4 (1.4, 1.8, 380, 0.4), b5 (1.6, 2.2, 456, 0.4),
  b6 (1.8, 2.6, 528, 0.5), b7 (2.0, 3.1, 600, 0.5). They are close to, not equal to, α^φ/β^φ/γ^φ
  (e.g. b1 is (1.0, 1.1, 240) whereas φ = 1 gives (1.1, 1.2, 258)).
* ``phi=φ`` applies the formula itself: width 1.1^φ, depth 1.2^φ, resolution ``round(224·1.15^φ)``.

The resolution a variant expects is ``model.resolution``; the model runs at any input size.

Cost at 3×224×224, 1,000 classes, B0 (MACs of convs and the linear layer, ``effdl_lightning.measure``):
385.8M MACs, 5.29M params; paper (Table 2): 0.39B FLOPs (the paper's "FLOPs" are multiply-adds),
5.3M params. The count includes the SE layers' 1×1 convs on 1×1 maps (≈0.63M MACs: they act on
pooled vectors) but not the SE gating products, swish or BatchNorm. B1 at 240: 686.8M (paper 0.70B);
B2 at 260: 993.6M (1.0B); params B1-B7: 7.79M, 9.11M, 12.2M, 19.3M, 30.4M, 43.0M, 66.3M (paper 7.8M,
9.2M, 12M, 19M, 30M, 43M, 66M).
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

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases (Section 3.3 of arXiv 1905.11946)

# Table 1 of arXiv 1905.11946 (MBConv = inverted residual with SE 0.25 and swish).
EFFICIENTNET_B0_ARCH: list[list[str]] = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]

# (width, depth, resolution, dropout) of the reference implementation.
EFFICIENTNET_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def compound_coefficients(phi: float) -> tuple[float, float, int]:
    """Return ``(width β^φ, depth α^φ, resolution round(224·γ^φ))`` for compound coefficient φ."""
    return BETA**phi, ALPHA**phi, round(224 * GAMMA**phi)


@register_model(
    "efficientnet", default_input_shape=(3, 32, 32), default_num_classes=10, test_kwargs={"width_mult": 0.5}
)
class EfficientNet(ConvClassifier):
    """EfficientNet: MnasNet-like MBConv stages scaled in depth, width and resolution (arXiv 1905.11946).

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels (the variant's resolution is
            ``self.resolution``; any H×W runs).
        variant: ``"b0"`` … ``"b7"`` from the reference table (module docstring).
        phi: if given, the compound coefficient φ replaces the variant's width/depth/resolution
            (dropout stays the variant's).
        width_mult: overrides the width coefficient (channels ``make_divisible(c·w, 8)``).
        depth_mult: overrides the depth coefficient (repeats ``ceil(d·n)``).
        dropout: dropout before the classifier; ``None`` takes the variant's.
        drop_path_rate: stochastic depth of the last block (0.2 in the reference code), linear in depth.
        small_input: small-input stem (stem and the first stride-2 stage at stride 1, overall stride 8);
            ``None`` chooses it when the shorter side is under 64 px.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        variant: str = "b0",
        phi: float | None = None,
        width_mult: float | None = None,
        depth_mult: float | None = None,
        dropout: float | None = None,
        drop_path_rate: float = 0.2,
        small_input: bool | None = None,
    ) -> None:
        if variant not in EFFICIENTNET_PARAMS:
            raise ValueError(f"variant must be one of {sorted(EFFICIENTNET_PARAMS)}, got {variant!r}")
        width, depth, resolution, variant_dropout = EFFICIENTNET_PARAMS[variant]
        if phi is not None:
            width, depth, resolution = compound_coefficients(phi)
        width = width if width_mult is None else width_mult
        depth = depth if depth_mult is None else depth_mult
        if not (width > 0 and depth > 0):
            raise ValueError(f"width and depth multipliers must be > 0, got {width} and {depth}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        stem_chs = make_divisible(32 * width)
        stem = ConvBnAct(in_chans, stem_chs, 3, stride=1 if small else 2, act="swish")
        stages, out_chs = build_stages(
            EFFICIENTNET_B0_ARCH,
            stem_chs,
            act="swish",
            width_mult=width,
            depth_mult=depth,
            drop_path_rate=drop_path_rate,
            unstrided=1 if small else 0,
        )
        num_features = make_divisible(1280 * width)
        head = ConvBnAct(out_chs, num_features, 1, act="swish")
        dropout = variant_dropout if dropout is None else dropout
        super().__init__(stem, stages, head, num_features, num_classes, dropout)
        self.variant, self.phi = variant, phi
        self.width_mult, self.depth_mult, self.resolution = width, depth, resolution
        self.small_input = small
