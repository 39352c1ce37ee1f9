"""Bit-packed storage of low-bit and binary networks: exact bytes and exact outputs after loading."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from effdl_lightning.core.quant.inq import power_of_two_quantize
from effdl_lightning.core.quant.modules import QuantizationConfig, quantize_, quantized_layers
from effdl_lightning.core.quant.quantizers import DoReFaWeightQuantizer
from effdl_lightning.core.record import append, get_record
from effdl_lightning.export import PackedReport, load_packed, save_packed
from effdl_lightning.models import create

Build = Callable[[], nn.Module]


def _mlp(hidden: tuple[int, ...] = (48, 32), **kw: Any) -> Build:
    return lambda: create("mlp", input_shape=(1, 8, 8), hidden=hidden, batch_norm=True, **kw)


def _cnn() -> nn.Module:
    return create("vgg_small", input_shape=(1, 8, 8), widths=(8, "M", 16, "M"))


def _quantized(build: Build, config: QuantizationConfig, x: Tensor, prune: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = build()
    model.train()
    model(x)  # batch-norm statistics that are not the defaults
    if prune:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear | nn.Conv2d):
                    m.weight.mul_(torch.rand_like(m.weight) >= prune)
    append(model, quantize_(model, config))
    model(x)  # observers (affine activation ranges) see data
    return model.eval()


def _round_trip(model: nn.Module, build: Build, x: Tensor, path: Path) -> tuple[PackedReport, nn.Module]:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = save_packed(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # saving changes nothing
    loaded = load_packed(build(), path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the file is the header plus exactly the per-tensor payload
    assert (
        report.file_bytes == path.stat().st_size == report.header_bytes + sum(t.bytes for t in report.tensors)
    )
    return report, loaded


def _rows(report: PackedReport) -> dict[str, Any]:
    return {t.name: t for t in report.tensors}


CASES = {
    "dorefa_w1": (_cnn, QuantizationConfig("dorefa", weight_bits=1), 1),
    "dorefa_w2": (_cnn, QuantizationConfig("dorefa", weight_bits=2), 2),
    "dorefa_w4": (_mlp(), QuantizationConfig("dorefa", weight_bits=4, activation_bits=4), 4),
    "binaryconnect": (_mlp(), QuantizationConfig("binaryconnect"), 1),
    "binarynet": (_mlp(activation="hardtanh"), QuantizationConfig("binarynet"), 1),
    "affine4": (_cnn, QuantizationConfig("affine", weight_bits=4, activation_bits=4), 4),
    "int8": (_mlp(), QuantizationConfig("int8"), 8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_exact_outputs_and_bytes(case: str, tmp_path: Path) -> None:
    build, config, bits = CASES[case]
    x = torch.randn(8, 1, 8, 8)
    model = _quantized(build, config, x)
    report, loaded = _round_trip(model, build, x, tmp_path / "m.epk")
    rows = _rows(report)
    layers = quantized_layers(model)
    assert layers and set(quantized_layers(loaded)) == set(layers)  # the record rebuilt the twins
    for name, layer in layers.items():
        row = rows[f"{name}.weight"]
        assert row.format == "codes" and row.bits == bits and "zero mask" not in row.note
        assert row.bytes == math.ceil(layer.weight.numel() * bits / 8)
        # the loaded weight holds the quantized values; re-quantizing it is switched off
        assert torch.equal(loaded.get_submodule(name).weight, layer.quantized_weight())
        assert loaded.get_submodule(name).weight_quantizer.enabled is False
        if layer.input_quantizer is not None:
            assert loaded.get_submodule(name).input_quantizer.enabled is True
    if config.scheme == "dorefa":  # the papers' full-precision first and last layers are stored raw fp32
        assert rows["head.weight"].format == "raw" and rows["head.weight"].bits == 32
    assert not any(".min_val" in t.name for t in report.tensors if ".weight_quantizer." in t.name)


def test_one_bit_megaweight_takes_125000_bytes(tmp_path: Path) -> None:
    build: Build = lambda: create("mlp", input_shape=(1000,), hidden=(1000,), num_classes=10)  # noqa: E731
    x = torch.randn(4, 1000)
    model = _quantized(build, QuantizationConfig("binaryconnect"), x)
    report, _ = _round_trip(model, build, x, tmp_path / "big.epk")
    rows = _rows(report)
    assert rows["hidden.0.0.weight"].bytes == 125_000  # 10^6 weights at 1 bit
    assert rows["head.weight"].bytes == 1_250  # 10 × 1000 at 1 bit
    assert report.payload_bytes == 125_000 + 1_000 * 4 + 1_250 + 10 * 4  # codes + fp32 biases
    assert report.fp32_bytes == 4 * (1000 * 1000 + 1000 + 10 * 1000 + 10)


@pytest.mark.parametrize(
    "config",
    [
        QuantizationConfig("dorefa", weight_bits=1, first_layer="quantize", last_layer="quantize"),
        QuantizationConfig("dorefa", weight_bits=2, first_layer="quantize", last_layer="quantize"),
        QuantizationConfig("binaryconnect"),
        QuantizationConfig("binarynet"),
    ],
    ids=["dorefa_w1", "dorefa_w2", "binaryconnect", "binarynet"],
)
def test_pruned_zeros_survive_with_a_zero_mask(config: QuantizationConfig, tmp_path: Path) -> None:
    build = _mlp()
    x = torch.randn(8, 1, 8, 8)
    model = _quantized(build, config, x, prune=0.6)
    report, loaded = _round_trip(model, build, x, tmp_path / "pruned.epk")
    rows = _rows(report)
    bits = config.bits()[0]
    for name, layer in quantized_layers(model).items():
        zeros = layer.weight == 0
        assert 0.5 < zeros.float().mean() < 0.7
        assert torch.equal(loaded.get_submodule(name).weight == 0, zeros)
        row, n, kept = rows[f"{name}.weight"], layer.weight.numel(), int((~zeros).sum())
        assert row.note == "zero mask" and row.bits == bits
        assert row.bytes == math.ceil(n / 8) + math.ceil(kept * bits / 8)  # codes only for the kept weights
        assert row.bits_per_element < bits + 1


def test_affine_zero_is_a_code_so_no_mask(tmp_path: Path) -> None:
    build = _mlp()
    x = torch.randn(8, 1, 8, 8)
    model = _quantized(build, QuantizationConfig("affine", weight_bits=4), x, prune=0.6)
    report, _ = _round_trip(model, build, x, tmp_path / "affine.epk")
    assert all(not t.note for t in report.tensors if t.format == "codes")


def test_inq_power_of_two_weights_pack_at_b_bits(tmp_path: Path) -> None:
    build: Build = lambda: create("lenet300", input_shape=(1, 8, 8))  # noqa: E731
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(power_of_two_quantize(m.weight, bits=5))  # what INQ leaves (arXiv 1702.03044)
        model.fc2.weight[:5] = 0.0  # pruned zeros are a code of their own
    x = torch.randn(8, 1, 8, 8)
    report, loaded = _round_trip(model, build, x, tmp_path / "inq.epk")
    rows = _rows(report)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(model, name).weight
        row = rows[f"{name}.weight"]
        assert row.format == "power_of_two" and 2 <= row.bits <= 5 and row.note.startswith("n1=")
        assert row.bytes == math.ceil(w.numel() * row.bits / 8)
        assert torch.equal(getattr(loaded, name).weight, w)
    assert rows["fc1.bias"].format == "raw"  # biases are not powers of two: fp32
    assert report.ratio > 6


def test_stochastic_binaryconnect_is_stored_fp32_with_a_note(tmp_path: Path) -> None:
    build = _mlp()
    x = torch.randn(8, 1, 8, 8)
    model = _quantized(build, QuantizationConfig("binaryconnect", stochastic=True), x)
    report, loaded = _round_trip(model, build, x, tmp_path / "stochastic.epk")
    row = _rows(report)["head.weight"]
    assert row.format == "raw" and row.bits == 32 and "no integer codes" in row.note
    assert loaded.head.weight_quantizer.stochastic and loaded.head.weight_quantizer.enabled
    assert "no integer codes" in report.to_markdown()


@pytest.mark.parametrize("scheme", ["binarynet", "dorefa"])
def test_saving_a_loaded_model_again(scheme: str, tmp_path: Path) -> None:
    build = _mlp(activation="hardtanh")
    x = torch.randn(8, 1, 8, 8)
    config = QuantizationConfig(scheme, weight_bits=1 if scheme == "binarynet" else 4)
    first, loaded = _round_trip(_quantized(build, config, x), build, x, tmp_path / "first.epk")
    again, _ = _round_trip(loaded, build, x, tmp_path / "again.epk")
    row = _rows(again)["hidden.1.0.weight"]
    if scheme == "binarynet":  # sign(±1) = ±1: the disabled quantizer's codes still reproduce the weights
        assert row == _rows(first)["hidden.1.0.weight"]
    else:  # DoReFa W4: tanh moves the codes of already quantized weights: stored raw, said so
        assert row.format == "raw" and "do not reproduce" in row.note


def test_a_wrapper_with_the_record_on_a_submodule(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _mlp()()

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x)

    x = torch.randn(8, 1, 8, 8)
    wrapper = Wrapper()
    append(wrapper.model, quantize_(wrapper.model, QuantizationConfig("binarynet")))
    wrapper.eval()
    _, loaded = _round_trip(wrapper, Wrapper, x, tmp_path / "wrapped.epk")
    assert get_record(loaded.model) == get_record(wrapper.model)


def test_binary_mlp_is_over_25x_smaller_than_fp32(tmp_path: Path) -> None:
    build: Build = lambda: create("mlp", hidden=(512, 512, 512))  # noqa: E731
    x = torch.randn(4, 1, 28, 28)
    model = _quantized(build, QuantizationConfig("binaryconnect"), x)
    report, _ = _round_trip(model, build, x, tmp_path / "binary.epk")
    assert report.ratio > 25
    assert "| **total** |" in report.to_markdown()


def test_mismatched_models_and_files_are_refused(tmp_path: Path) -> None:
    x = torch.randn(8, 1, 8, 8)
    path = tmp_path / "m.epk"
    save_packed(_quantized(_mlp(), QuantizationConfig("binarynet"), x), path)
    with pytest.raises(ValueError, match=r"does not match .*hidden\.0\.0\.weight"):
        load_packed(_mlp(hidden=(40, 32))(), path)
    with pytest.raises(ValueError, match=r"saved from a .*MLP, not a .*VGGSmall"):
        load_packed(_cnn(), path)
    bad = tmp_path / "bad.epk"
    bad.write_bytes(b"nope" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="not a packed file"):
        load_packed(_mlp()(), bad)
    bad.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        load_packed(_mlp()(), bad)


def test_a_quantized_layer_without_a_record_is_refused(tmp_path: Path) -> None:
    model = _mlp()()
    quantize_(model, QuantizationConfig("binaryconnect"))  # the entry is not appended to the record
    with pytest.raises(
        ValueError, match=r"layer 'hidden\.0\.0' is quantized but no compression-record entry"
    ):
        save_packed(model, tmp_path / "m.epk")
    assert not (tmp_path / "m.epk").exists()


def test_codes_that_do_not_decode_to_the_forward_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _quantized(_mlp(), QuantizationConfig("dorefa", weight_bits=2), torch.randn(8, 1, 8, 8))
    monkeypatch.setattr(DoReFaWeightQuantizer, "decode", lambda self, codes: codes.float())
    with pytest.raises(ValueError, match=r"layer 'hidden\.1\.0': DoReFaWeightQuantizer codes do not decode"):
        save_packed(model, tmp_path / "m.epk")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
