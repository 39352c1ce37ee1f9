"""int8 deployment (issue 6 item 4): BN folding, the QDQ ONNX file, ORT's int8 kernels and their agreement."""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import pytest
import torch
from torch import nn

from effdl_lightning.core.quant.modules import QuantizationConfig, quantize_, quantized_layers
from effdl_lightning.export import export_int8_onnx, fold_batch_norm_, int8_agreement, load_int8_session
from effdl_lightning.export.qdq_ops import dequantize_linear, quantize_linear
from effdl_lightning.models.blocks import ConvBnAct, InvertedResidual
from effdl_lightning.models.resnet_cifar import BasicBlock

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

SHAPE = (1, 14, 14)
FLOAT_CONVS = ("Conv", "FusedConv")


def cnn(last_pool: str = "avg") -> nn.Sequential:
    """conv-BN-ReLU-maxpool-conv-BN-ReLU-{avg|max}pool-linear, 86k parameters."""
    pool = nn.AvgPool2d(2) if last_pool == "avg" else nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), pool,
        nn.Flatten(), nn.Linear(128 * 3 * 3, 10),
    )  # fmt: skip


def residual() -> nn.Sequential:
    """A stem and one ResNet basic block with a strided option-A shortcut (slice + zero pad) and a residual add."""
    stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(32 * 9, 10))
    return nn.Sequential(stem, BasicBlock(16, 32, stride=2), head)


def depthwise() -> nn.Sequential:
    """MobileNetV2's pieces: a ReLU6 stem, an inverted residual (1x1 → depthwise 3x3 → linear 1x1, skip)."""
    head = nn.Sequential(
        ConvBnAct(16, 32, 1, act="relu6"), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(32 * 9, 10)
    )
    return nn.Sequential(ConvBnAct(1, 16, 3, act="relu6"), InvertedResidual(16, 16, 3, 1, 4.0, "relu6"), head)


BUILDERS = {"cnn_avg": cnn, "cnn_max": lambda: cnn("max"), "residual": residual, "depthwise": depthwise}


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable 10-class task (a fixed template per class + noise): trained logits have clear margins."""
    templates = torch.randn(10, *SHAPE, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 0.7 * torch.randn(n, *SHAPE, generator=g), y


def qat_model(name: str, sites: str = "auto") -> nn.Module:
    """The model quantized for int8 and trained a few QAT steps (observers see the ranges), in eval mode."""
    return copy.deepcopy(_trained(name, sites))


@functools.cache
def _trained(name: str, sites: str = "auto") -> nn.Module:
    torch.manual_seed(0)
    model = BUILDERS[name]()
    quantize_(model, QuantizationConfig("int8", activation_sites=sites))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(25):
        x, y = data(64, seed=step + 1)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each model quantized (graph-level sites; ``<name>_inputs``: layer inputs only), trained, exported (weight
    dtype ``auto``) and loaded in ORT, once per module."""
    out: dict[str, Any] = {}
    for name, sites in [*((n, "auto") for n in BUILDERS), ("residual", "inputs"), ("depthwise", "inputs")]:
        model = qat_model(name, sites)
        key = name if sites == "auto" else f"{name}_inputs"
        path = tmp_path_factory.mktemp("int8") / f"{key}.onnx"
        result = export_int8_onnx(model, data(2, seed=99)[0], path, fp32_reference=False)
        out[key] = (model, result, load_int8_session(result.path))
    return out


def conv_names(model: nn.Module) -> set[str]:
    return {n for n, m in quantized_layers(model).items() if isinstance(m, nn.Conv2d)}


# ------------------------------------------------------------------------------------------ QDQ ops


def test_qdq_ops_follow_onnx_semantics() -> None:
    """ONNX QuantizeLinear: round half to even, add the zero point, saturate to the zero point's dtype;
    DequantizeLinear: (q - z)·s; per tensor or per slice along ``axis``."""
    x = torch.tensor([-1.0, 0.25, 0.75, 1.25, 300.0])
    q = quantize_linear(x, torch.tensor(0.5), torch.tensor(10, dtype=torch.uint8))
    assert q.dtype == torch.uint8 and q.tolist() == [8, 10, 12, 12, 255]  # 0.5 → 0, 1.5 → 2, 2.5 → 2
    assert dequantize_linear(q, torch.tensor(0.5), torch.tensor(10, dtype=torch.uint8)).tolist() == [
        -1.0, 0.0, 1.0, 1.0, 122.5,
    ]  # fmt: skip
    w = torch.tensor([[1.0, -2.0], [3.0, -400.0]])
    scale, zero = torch.tensor([1.0, 2.0]), torch.zeros(2, dtype=torch.int8)
    codes = quantize_linear(w, scale, zero, 0)
    assert codes.dtype == torch.int8 and codes.tolist() == [[1, -2], [2, -128]]
    assert dequantize_linear(codes, scale, zero, 0).tolist() == [[1.0, -2.0], [4.0, -256.0]]


# ------------------------------------------------------------------------------------------ folding


@pytest.mark.parametrize("name", ["cnn_avg", "residual", "depthwise"])
def test_fold_batch_norm_equals_unfolded(name: str) -> None:
    """Each folded conv computes BN(conv(x)) of the unfolded pair on the same input, to float rounding.

    Checked pair by pair, on the input the unfolded model gives the conv: over a whole quantized model a float
    rounding difference occasionally moves an activation across a rounding boundary (one LSB), and such flips
    cascade, so whole-model equality is checked loosely (top-1 and a small fraction of the logit scale).
    """
    model = qat_model(name)
    with torch.no_grad():  # negative BN scales: the folded quantizer must keep |k|, the weights sign(k)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight[::3] *= -1
    folded = copy.deepcopy(model)
    pairs = fold_batch_norm_(folded)
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(conv).register_forward_hook(lambda m, i, o, c=conv: inputs.__setitem__(c, i[0]))
        for conv, _ in pairs
    ]
    x = data(64, seed=7)[0]
    with torch.no_grad():
        ref = model(x)
        out = folded(x)
        for conv, bn in pairs:
            # .forward: without the graph-level output quantizer of the BN (the folded model's Identity has it)
            expected = model.get_submodule(bn).forward(model.get_submodule(conv)(inputs[conv]))
            got = folded.get_submodule(conv)(inputs[conv])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
            assert not folded.get_submodule(conv).weight_quantizer.observing  # frozen at s·|k|
    for hook in hooks:
        hook.remove()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_fold_plain_model_is_exact_to_float_rounding() -> None:
    torch.manual_seed(0)
    model = cnn()
    model.train()
    for _ in range(3):
        model(torch.randn(16, *SHAPE))
    model.eval()
    folded = copy.deepcopy(model)
    assert fold_batch_norm_(folded) == [("0", "1"), ("4", "5")]
    x = torch.randn(8, *SHAPE)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)


def test_fold_keeps_a_batch_norm_whose_conv_output_is_shared() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = Shared().eval()
    assert fold_batch_norm_(model) == []
    assert isinstance(model.bn, nn.BatchNorm2d)


# ------------------------------------------------------------------------------------------ export


def test_int8_file_is_smaller_than_fp32_and_stores_int8_weights(tmp_path: Any) -> None:
    model = qat_model("cnn_avg")
    assert sum(p.numel() for p in model.parameters()) >= 50_000
    result = export_int8_onnx(model, data(2, seed=99)[0], tmp_path / "cnn.onnx", weight_dtype="int8")
    assert result.size_bytes == os.path.getsize(result.path)
    assert result.fp32_size_bytes == os.path.getsize(str(result.fp32_path))
    assert result.fp32_size_bytes / result.size_bytes >= 3.5
    inits = {i.name: i for i in onnx.load(result.path).graph.initializer}
    int8_shapes = sorted(tuple(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.INT8)
    weight_shapes = sorted(tuple(m.weight.shape) for m in quantized_layers(model).values())
    assert [s for s in int8_shapes if len(s) > 1] == weight_shapes  # every weight as int8 codes
    float_bytes = sum(len(i.raw_data) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT)
    assert float_bytes < 0.02 * result.size_bytes  # scales only: no float copy of a weight
    assert result.folded == [("0", "1"), ("4", "5")]
    assert result.node_counts["QLinearConv"] == 1 and result.node_counts.get("QGemm") == 1


def test_sequential_cnn_convs_run_int8(exported: dict[str, Any]) -> None:
    """With max-pool before the classifier every conv is a QLinearConv; with average pooling the last conv's
    output (average-pooled in float by the QAT model, never quantized) keeps that conv in float."""
    _, result, _ = exported["cnn_max"]
    counts = result.node_counts
    assert counts["QLinearConv"] == 2 and counts.get("QGemm") == 1
    assert not any(counts.get(op) for op in FLOAT_CONVS)
    assert result.int8_output_layers == ["0", "4"]
    _, result, _ = exported["cnn_avg"]
    assert (
        result.node_counts["QLinearConv"] == 1
        and sum(result.node_counts.get(op, 0) for op in FLOAT_CONVS) == 1
    )
    assert result.float_output_layers == ["4", "9"]


@pytest.mark.parametrize("name", ["residual", "depthwise", "residual_inputs", "depthwise_inputs"])
def test_int8_convs_are_those_whose_output_is_requantized(exported: dict[str, Any], name: str) -> None:
    model, result, _ = exported[name]
    int8_convs = [n for n in result.int8_output_layers if n in conv_names(model)]
    assert result.node_counts.get("QLinearConv", 0) == len(int8_convs) >= 1
    floats = sum(result.node_counts.get(op, 0) for op in FLOAT_CONVS)
    assert floats == len(conv_names(model)) - len(int8_convs)
    expected = {
        # graph-level sites: the residual add reads and writes quantized tensors, so ORT adds integers
        # (QLinearAdd) and every conv but the one feeding the float average pool runs int8
        "residual": ["0.0", "1.conv1", "1.conv2"],
        "depthwise": ["0.conv", "1.conv_pw.conv", "1.conv_dw.conv", "1.conv_pwl.conv"],
        # layer inputs only: a conv feeding the add (never quantized in QAT) stays float
        "residual_inputs": ["1.conv1"],
        "depthwise_inputs": ["1.conv_pw.conv", "1.conv_dw.conv"],
    }
    assert int8_convs == expected[name]
    assert result.node_counts.get("QLinearAdd", 0) == (0 if name.endswith("_inputs") else 1)


@pytest.mark.parametrize("name", [*BUILDERS, "residual_inputs"])
def test_ort_int8_agrees_with_the_fake_quantized_model(exported: dict[str, Any], name: str) -> None:
    """The int8 kernels compute what the fake-quantized model simulates, up to rounding: ORT adds an int32 bias
    rounded to s_in·s_w (PyTorch adds the float bias) and requantizes with a float multiplier, so an activation
    near a rounding boundary can land one LSB away; such flips propagate. Hence a tolerance of a few percent
    of the logit scale on the worst logit, much less on average, and top-1 agreement >= 0.99."""
    model, _, session = exported[name]
    stats = int8_agreement(model, session, [data(128, seed=s)[0] for s in (11, 12)])
    assert stats["samples"] == 256
    assert stats["top1_agreement"] >= 0.99
    assert stats["max_abs_diff"] <= 0.05 * stats["ref_max_abs"]
    assert stats["mean_abs_diff"] <= 0.005 * stats["ref_max_abs"]


# ------------------------------------------------------------------------------------------ errors


def test_export_refusals(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="no quantized layer"):
        export_int8_onnx(cnn(), torch.randn(1, *SHAPE), tmp_path / "a.onnx")
    model = cnn()
    quantize_(model, QuantizationConfig("int8"))
    with pytest.raises(ValueError, match="weight_dtype='int4'"):
        export_int8_onnx(model, torch.randn(1, *SHAPE), tmp_path / "a.onnx", weight_dtype="int4")
    with pytest.raises(ValueError, match="layer '0': its input quantizer never observed"):
        export_int8_onnx(model, torch.randn(1, *SHAPE), tmp_path / "a.onnx")
    dorefa = cnn()
    quantize_(dorefa, QuantizationConfig("dorefa"))
    with pytest.raises(ValueError, match=r"layer '4'.*int8"):
        export_int8_onnx(dorefa.eval(), torch.randn(1, *SHAPE), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_session_and_agreement_arguments(exported: dict[str, Any]) -> None:
    model, result, _ = exported["cnn_max"]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        load_int8_session(result.path, threads=0)
    with pytest.raises(ValueError, match="at least one batch"):
        int8_agreement(model, load_int8_session(result.path), [])
