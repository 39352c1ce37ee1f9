"""Efficient architectures: costs at 224 against the papers, small-input stems, block strings, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmarks import architectures
from effdl_lightning.measure import profile
from effdl_lightning.models import (
    EfficientNet,
    MnasNetA1,
    MobileNetV1,
    MobileNetV2,
    ShuffleNetV1,
    ShuffleNetV2,
    create,
)
from effdl_lightning.models.blocks import (
    BlockSpec,
    DepthwiseSeparable,
    InvertedResidual,
    build_stages,
    channel_shuffle,
    make_divisible,
    parse_block,
    use_small_input,
)
from effdl_lightning.models.efficientnet import ALPHA, BETA, EFFICIENTNET_PARAMS, GAMMA, compound_coefficients
from effdl_lightning.models.shufflenet import ShuffleV1Unit

ROOT = Path(__file__).resolve().parents[1]
ARCH_NAMES = ["mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2", "efficientnet", "mnasnet_a1"]


def conv(model: nn.Module, path: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` at ``path`` (e.g. ``"stem.conv"``)."""
    module = model.get_submodule(path)
    assert isinstance(module, nn.Conv2d), f"{path} is {type(module).__name__}"
    return module


def stage_depths(stages: nn.Module) -> list[int]:
    """Blocks per stage of a ``stages`` container."""
    return [len(list(stage.children())) for stage in stages.children()]


def weight_params(model: nn.Module) -> int:
    """Parameters outside BatchNorm (the papers' counts are of conv/linear weights and biases)."""
    return sum(
        p.numel() for m in model.modules() if not isinstance(m, nn.BatchNorm2d) for p in m.parameters(False)
    )


# (model, paper MACs, paper params or None). All at 3×224×224, 1,000 classes; papers' "FLOPs" = MACs.
# MobileNetV1: arXiv 1704.04861 Tables 6/7. MobileNetV2: 1801.04381 Table 4. ShuffleNet v1: 1707.01083
# Table 1 (1×, g=3: 137M, the "140 MFLOPs" class). ShuffleNet v2: 1807.11164 Table 5. EfficientNet-B0:
# 1905.11946 Table 2 (0.39B). MnasNet-A1: 1807.11626 Table 1.
PAPER_COSTS = [
    ("mobilenet_v1_1.0", lambda: MobileNetV1(), 569e6, 4.2e6),
    ("mobilenet_v1_0.5", lambda: MobileNetV1(width_mult=0.5), 149e6, 1.3e6),
    ("mobilenet_v2_1.0", lambda: MobileNetV2(), 300e6, 3.4e6),
    ("shufflenet_v1_1x_g3", lambda: ShuffleNetV1(groups=3), 140e6, None),
    ("shufflenet_v2_1x", lambda: ShuffleNetV2(), 146e6, 2.3e6),
    ("efficientnet_b0", lambda: EfficientNet(variant="b0"), 390e6, 5.3e6),
    ("mnasnet_a1", lambda: MnasNetA1(), 312e6, 3.9e6),
]


@pytest.mark.parametrize(("name", "build", "macs", "params"), PAPER_COSTS, ids=[c[0] for c in PAPER_COSTS])
def test_cost_at_224_matches_the_paper(name: str, build: object, macs: float, params: float | None) -> None:
    model = build()  # type: ignore[operator]
    prof = profile(model, (3, 224, 224), latency=False)
    assert prof.macs == pytest.approx(macs, rel=0.03), f"{name}: {prof.macs / 1e6:.1f}M MACs"
    if params is not None:
        # MobileNetV2: all parameters are 3.505M (+3.1% of the paper's 3.4M), of which 34k are BatchNorm's;
        # without them 3.47M (+2.1%), the count the reference (TF-slim) table gives. Every other model is
        # within 3% either way.
        assert weight_params(model) == pytest.approx(params, rel=0.03), f"{name}: {weight_params(model)}"
        assert prof.params == pytest.approx(params, rel=0.035), f"{name}: {prof.params} parameters"


@pytest.mark.parametrize(("groups", "macs"), [(1, 143e6), (2, 140e6), (4, 133e6), (8, 137e6)])
def test_shufflenet_v1_group_counts_match_table_1(groups: int, macs: float) -> None:
    assert profile(ShuffleNetV1(groups=groups), (3, 224, 224), latency=False).macs == pytest.approx(
        macs, rel=0.03
    )


def test_efficientnet_variants_follow_the_reference_table() -> None:
    paper_params = {"b1": 7.8e6, "b2": 9.2e6, "b3": 12e6, "b4": 19e6}  # Table 2 of arXiv 1905.11946
    for variant, params in paper_params.items():
        model = EfficientNet(variant=variant)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.03), variant
        assert model.resolution == EFFICIENTNET_PARAMS[variant][2]
    b7 = EfficientNet(variant="b7", input_shape=(3, 600, 600))
    # ceil(3.1·n) repeats of n = 1, 2, 2, 3, 3, 4, 1 → 55 blocks; stem 64 and head 2560 channels
    assert sum(stage_depths(b7.stages)) == 55
    assert b7.num_features == 2560 and conv(b7, "stem.conv").out_channels == 64
    assert b7.resolution == 600 and b7.dropout.p == 0.5


def test_efficientnet_compound_scaling_by_phi() -> None:
    width, depth, resolution = compound_coefficients(1.0)
    assert (width, depth, resolution) == (pytest.approx(1.1), pytest.approx(1.2), 258)
    assert abs(ALPHA * BETA**2 * GAMMA**2 - 2.0) < 0.1  # α·β²·γ² ≈ 2: FLOPs double per unit of φ
    model = EfficientNet(phi=2.0, input_shape=(3, 32, 32))
    assert model.width_mult == pytest.approx(1.21) and model.depth_mult == pytest.approx(1.44)
    assert model.resolution == round(224 * 1.15**2)
    # repeats ceil(1.44·n): 2, 3, 3, 5, 5, 6, 2
    assert stage_depths(model.stages) == [math.ceil(1.44 * n) for n in (1, 2, 2, 3, 3, 4, 1)]
    half = EfficientNet(width_mult=0.5, depth_mult=0.5, input_shape=(3, 32, 32))
    assert conv(half, "stem.conv").out_channels == 16
    with pytest.raises(ValueError, match=r"variant must be one of \['b0', .*'b7'\], got 'b9'"):
        EfficientNet(variant="b9")


@pytest.mark.parametrize("name", ARCH_NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_small_input_stem_runs_and_keeps_a_4x4_map(name: str, shape: tuple[int, int, int]) -> None:
    small = {"scale": 0.25} if name == "shufflenet_v1" else {"width_mult": 0.5}
    model = create(name, num_classes=7, input_shape=shape, **small)
    assert model.small_input is True
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape)
        assert model(x).shape == (2, 7)
        assert model.forward_features(x).shape[-2:] == (4, 4)  # overall stride 8: 28 → 4, 32 → 4
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == shape[0]


def test_small_input_switch() -> None:
    assert use_small_input(None, (1, 28, 28)) and use_small_input(None, (3, 32, 32))
    assert not use_small_input(None, (3, 224, 224)) and not use_small_input(None, (3, 64, 64))
    assert use_small_input(True, (3, 224, 224)) and not use_small_input(False, (3, 32, 32))
    big_stem = MobileNetV2(num_classes=10, input_shape=(3, 32, 32), width_mult=0.25, small_input=False)
    assert big_stem.eval().forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match=r"input_shape must be \(channels, height, width\).*got \(3, 32\)"):
        MobileNetV2(input_shape=(3, 32))


def test_make_divisible_rounding() -> None:
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(16 * 1.1) == 16  # 17.6 → 16 (within 10%)
    assert make_divisible(1280 * 1.1) == 1408
    assert make_divisible(11) == 16  # 8 would lose more than 10% of 11
    assert make_divisible(3, 8) == 8  # at least one divisor
    assert make_divisible(60 * 0.25, 4) == 16


def test_block_strings_round_trip_and_validate() -> None:
    spec = parse_block("ir_r2_k5_s2_e6_c40_se0.25_nsw")
    assert spec == BlockSpec("ir", 2, 5, 2, 6.0, 40, 0.25, True, "swish")
    assert parse_block(str(spec)) == spec
    assert not parse_block("dsa_r1_k3_s1_c64").skip  # MobileNetV1's blocks have no residual
    assert not parse_block("ds_r1_k3_s1_c16_noskip").skip
    assert str(parse_block("ds_r1_k3_s1_c16_noskip")) == "ds_r1_k3_s1_e1_c16_noskip"
    with pytest.raises(ValueError, match=r"unknown block type 'xx' in 'xx_r1_c8'; expected one of"):
        parse_block("xx_r1_c8")
    with pytest.raises(ValueError, match=r"cannot parse token 'q7' of block 'ir_q7_c8'"):
        parse_block("ir_q7_c8")
    with pytest.raises(ValueError, match=r"block 'ir_r1_k3' lacks its output channels"):
        parse_block("ir_r1_k3")


def test_build_stages_scales_width_depth_and_strides() -> None:
    stages, out = build_stages(
        [["ir_r3_k3_s2_e6_c24"], ["cn_r1_k1_s1_c40"]], 16, width_mult=0.5, depth_mult=1.5
    )
    assert out == 24  # make_divisible(40 · 0.5) = 24
    assert stage_depths(stages) == [5, 2]  # ceil(3 · 1.5), ceil(1 · 1.5)
    first = stages.get_submodule("0.0")
    assert isinstance(first, InvertedResidual) and conv(first, "conv_dw.conv").stride == (2, 2)
    assert conv(first, "conv_pw.conv").out_channels == 96 and not first.has_skip
    assert all(getattr(b, "has_skip", False) for b in list(stages.get_submodule("0").children())[1:])
    assert isinstance(first.conv_pwl.act, nn.Identity)  # linear bottleneck
    unstrided, _ = build_stages([["ir_r1_k3_s2_e6_c24"]], 16, unstrided=1)
    assert conv(unstrided, "0.0.conv_dw.conv").stride == (1, 1)


def test_mobilenet_structure() -> None:
    v1 = MobileNetV1()
    blocks = [m for m in v1.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(blocks) == 13 and not any(b.has_skip for b in blocks)
    assert all(isinstance(b.conv_pw.act, nn.ReLU) for b in blocks)
    v2 = MobileNetV2()
    residuals = [m for m in v2.modules() if isinstance(m, InvertedResidual) and m.has_skip]
    assert len(residuals) == 10  # Table 2: the repeats after the first of each stage
    assert isinstance(v2.head.act, nn.ReLU6) and v2.num_features == 1280
    assert (
        MobileNetV2(width_mult=0.5).num_features == 1280 and MobileNetV2(width_mult=1.4).num_features == 1792
    )
    with pytest.raises(ValueError, match=r"width_mult must be > 0, got 0"):
        MobileNetV1(width_mult=0)


def test_channel_shuffle_and_shufflenet_units() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    v1 = ShuffleNetV1(groups=3)
    units = [m for m in v1.modules() if isinstance(m, ShuffleV1Unit)]
    assert len(units) == 16
    assert conv(units[0], "conv_pw.conv").groups == 1  # Stage 2's first 1×1 conv is not grouped
    assert conv(units[1], "conv_pw.conv").groups == 3
    assert conv(units[0], "conv_pwl.conv").out_channels == 240 - 24  # stride 2: concat with the pooled input
    assert conv(ShuffleNetV1(groups=8, scale=0.5), "stages.15.conv_pwl.conv").out_channels == 768
    with pytest.raises(ValueError, match=r"groups must be one of \[1, 2, 3, 4, 8\], got 5"):
        ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match=r"width_mult must be one of \[0.5, 1.0, 1.5, 2.0\], got 0.75"):
        ShuffleNetV2(width_mult=0.75)
    assert ShuffleNetV2(width_mult=2.0).num_features == 2048


def test_mnasnet_takes_a_searched_architecture() -> None:
    arch = [["ds_r1_k3_s1_c16"], ["ir_r2_k5_s2_e3_c24_se0.25_nsw"]]
    model = MnasNetA1(num_classes=5, input_shape=(1, 28, 28), arch=arch)
    assert len(model.stages) == 2 and isinstance(model.get_submodule("stages.1.0.conv_dw.act"), nn.SiLU)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_model_config_instantiates_with_mnist_shape(name: str) -> None:
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    data = OmegaConf.create({"data": {"num_classes": 10, "input_shape": [1, 28, 28]}})
    merged = OmegaConf.merge(data, {"model": cfg})
    kwargs = OmegaConf.to_container(merged.model, resolve=True)
    assert isinstance(kwargs, dict)
    options: dict[str, Any] = {str(k): v for k, v in kwargs.items()}
    target = options.pop("_target_")
    assert target.startswith("effdl_lightning.models.")
    assert create(name, **options).__class__.__name__ == target.rsplit(".", 1)[1]


def test_benchmark_guideline_layers_have_equal_macs() -> None:
    for scale in (1, 2):
        g1 = [macs for _, _, _, macs in architectures.g1_nets(scale, tiny=True)]
        g2 = [macs for _, _, _, macs in architectures.g2_nets(scale, tiny=True)]
        assert max(g1) / min(g1) < 1.06 and max(g2) / min(g2) < 1.02  # equal MACs, as in the paper
    assert architectures.g1_macs(128, 128) == 2 * 10 * 56 * 56 * 128 * 128
    assert architectures.g2_macs(360, 8) == 10 * 56 * 56 * 360 * 360 // 8
    net = architectures.g1_net(8, 16)
    assert profile(net, (8, 56, 56), latency=False).macs == architectures.g1_macs(8, 16)
    rows = architectures.time_guideline_nets(
        architectures.g2_nets(scale=1, tiny=True), threads=1, repeats=2, warmup=1
    )
    assert len(rows) == 4 and all(r["latency_ms"] > 0 for r in rows)


def test_benchmark_quick_run_writes_its_results(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        architectures.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "architectures.json").exists()  # quick runs never overwrite the real results
    result = json.loads((tmp_path / "architectures_quick.json").read_text())
    assert [r["name"] for r in result["accuracy"]] == ["vgg_small", "mobilenet_v2", "shufflenet_v2"]
    assert all(0.0 <= r["acc_mean"] <= 1.0 and r["macs"] > 0 for r in result["accuracy"])
    assert [len(b["rows"]) for b in result["g1"] + result["g2"]] == [4, 4]
    md = (tmp_path / "architectures_quick.md").read_text()
    assert "## Definitions" in md and "G1" in md and "G2" in md
    assert (tmp_path / "architectures_quick.png").stat().st_size > 0
