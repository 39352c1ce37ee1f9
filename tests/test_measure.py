"""Measurement: parameters, nonzeros, MACs against hand formulas and FlopCounterMode, size, latency."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from effdl_lightning.measure import (
    ModelProfile,
    count_parameters,
    measure_latency,
    profile,
    register_macs_rule,
    state_dict_bytes,
)
from effdl_lightning.models import CNN1D, LeNet5, LeNet300100, ResNetCifar

# the package re-exports the function `profile`, which shadows the submodule's attribute
profile_module = importlib.import_module("effdl_lightning.measure.profile")


def macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    return profile(model, shape, latency=False).macs


def flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, *shape))
    return counter.get_total_flops() // 2  # FLOPs = 2 × MACs


def test_lenet_figures_match_deep_compression() -> None:
    lenet300 = profile(LeNet300100(), (1, 28, 28), latency=False)
    assert (lenet300.params, lenet300.params_nonzero, lenet300.macs) == (266_610, 266_610, 266_200)
    lenet5 = profile(LeNet5(), (1, 28, 28), latency=False)
    assert (lenet5.params, lenet5.macs) == (431_080, 2_293_000)
    assert {layer.name: layer.macs for layer in lenet5.layers if layer.macs} == {
        "conv1": 288_000,
        "conv2": 1_600_000,
        "fc1": 400_000,
        "fc2": 5_000,
    }
    assert macs(LeNet300100(input_shape=(1, 8, 8)), (1, 8, 8)) == 64 * 300 + 300 * 100 + 100 * 10


@pytest.mark.parametrize(
    ("layer", "shape", "expected"),
    [
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 16, 16), 3 * 8 * 9 * 8 * 8),
        (nn.Conv2d(4, 6, 3, groups=2), (4, 10, 10), 2 * 6 * 9 * 8 * 8),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 12, 12), 1 * 8 * 9 * 12 * 12),
        (nn.Conv2d(6, 4, (1, 5), padding=(0, 2), bias=False), (6, 7, 9), 6 * 4 * 5 * 7 * 9),
        (nn.Conv1d(2, 4, 5), (2, 40), 2 * 4 * 5 * 36),
        (nn.Conv1d(4, 4, 3, stride=2, padding=1, dilation=1), (4, 40), 4 * 4 * 3 * 20),
        (nn.Conv3d(2, 3, 3), (2, 6, 6, 6), 2 * 3 * 27 * 4 * 4 * 4),
        (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (4, 5, 5), 4 * 3 * 9 * 5 * 5),
        (nn.Linear(20, 7), (20,), 20 * 7),
        (nn.Linear(16, 8), (5, 16), 5 * 16 * 8),  # tokens: leading dims beyond batch count
        (nn.Bilinear(3, 3, 4), None, 3 * 3 * 4),
    ],
)
def test_single_layer_macs_match_formula(
    layer: nn.Module, shape: tuple[int, ...] | None, expected: int
) -> None:
    if shape is None:  # Bilinear takes two inputs
        model: nn.Module = TwoInputs(layer)
        shape = (3,)
    else:
        model = layer
    assert macs(model, shape) == expected


class TwoInputs(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, x)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def test_attention_counts_its_projections() -> None:
    result = profile(SelfAttention(), (5, 16), latency=False)
    assert result.macs == 4 * 5 * 16 * 16
    assert [layer.name for layer in result.layers] == ["attn"]  # out_proj is part of the unit


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (LeNet5(), (1, 28, 28)),
        (ResNetCifar(depth=8, shortcut="B"), (3, 16, 16)),
        (CNN1D(), (1, 40)),
        (
            nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()),
            (3, 6, 6),
        ),
    ],
)
def test_total_macs_agree_with_flop_counter(model: nn.Module, shape: tuple[int, ...]) -> None:
    assert macs(model, shape) == flop_counter_macs(model, shape)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def test_module_called_twice_counts_twice() -> None:
    result = profile(Twice(), (8,), latency=False)
    (layer,) = result.layers
    assert (layer.macs, layer.calls, layer.params, result.params) == (128, 2, 72, 72)
    assert "fc (x2)" in result.to_table()


class Gated(nn.Module):
    """A layer type the profiler does not know: a raw weight used through F.linear plus a router."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.router = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * torch.sigmoid(self.router(x))


def test_register_macs_rule_measures_the_module_as_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_module, "_MACS_RULES", dict(profile_module._MACS_RULES))
    model = nn.Sequential(Gated(), nn.Linear(6, 2))
    assert macs(model, (4,)) == 4 * 1 + 6 * 2  # only the router is seen without a rule
    register_macs_rule(Gated, lambda module, inputs, output: 4 * 6 + 4 * 1)
    result = profile(model, (4,), latency=False)
    assert result.macs == 4 * 6 + 4 + 6 * 2
    assert [(layer.name, layer.params) for layer in result.layers] == [("0", 24 + 5), ("1", 14)]
    with pytest.raises(ValueError, match=r"module_type must be a subclass of nn.Module; got 3"):
        register_macs_rule(3, lambda module, inputs, output: 0)  # type: ignore[arg-type]


class RawLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def test_leaf_with_weights_but_no_rule_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=profile_module.__name__):
        assert macs(nn.Sequential(RawLeaf()), (4,)) == 0
    assert "no MACs rule for 0 (RawLeaf)" in caplog.text


def test_nonzeros_and_effective_macs_after_zeroing_half_a_layer() -> None:
    model = LeNet300100()
    with torch.no_grad():
        model.fc1.weight[:150].zero_()
    result = profile(model, (1, 28, 28), latency=False)
    assert result.params == 266_610
    assert result.params_nonzero == 266_610 - 150 * 784
    assert result.macs == 266_200
    assert result.effective_macs == pytest.approx(266_200 - 150 * 784)
    fc1 = next(layer for layer in result.layers if layer.name == "fc1")
    assert (fc1.params_nonzero, fc1.effective_macs) == (235_500 - 150 * 784, pytest.approx(150 * 784))
    assert result.sparsity == pytest.approx(150 * 784 / 266_610)
    assert result.compression_ratio == pytest.approx(266_610 / (266_610 - 150 * 784))
    assert count_parameters(model) == (result.params, result.params_nonzero)


def test_torch_prune_masks_and_shared_parameters_are_counted_honestly() -> None:
    model = LeNet300100()
    prune.l1_unstructured(model.fc2, "weight", amount=0.5)
    assert count_parameters(model) == (266_610, 266_610 - 15_000)
    assert profile(model, (1, 28, 28), latency=False).effective_macs == pytest.approx(266_200 - 15_000)
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied) == (16, 16)
    empty = nn.Linear(3, 2)
    nn.init.zeros_(empty.weight), nn.init.zeros_(empty.bias)
    result = profile(empty, (3,), latency=False)
    assert (result.sparsity, result.compression_ratio) == (1.0, float("inf"))


def test_size_bytes_is_about_four_bytes_per_parameter() -> None:
    model = LeNet300100()
    size = state_dict_bytes(model)
    assert 4 * 266_610 < size < 4 * 266_610 + 16_000
    assert profile(model, (1, 28, 28), latency=False).size_bytes == size


def test_latency_is_reported_per_batch_with_threads() -> None:
    threads_before = torch.get_num_threads()
    result = profile(LeNet5(), (1, 28, 28), batch_sizes=(1, 4), warmup=1, repeats=3, threads=1)
    assert torch.get_num_threads() == threads_before
    assert (result.threads, result.runtime, result.device) == (1, "eager", "cpu")
    assert set(result.latency_ms) == set(result.latency_spread_ms) == {1, 4}
    for batch, median in result.latency_ms.items():
        p25, p75 = result.latency_spread_ms[batch]
        assert 0 < p25 <= median <= p75
    raw = measure_latency(nn.Linear(4, 2), (4,), batch_sizes=(2,), warmup=0, repeats=1)
    assert set(raw) == {2} and len(raw[2]) == 3 and raw[2][0] > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repeats": 0}, r"repeats must be >= 1; got 0"),
        ({"warmup": -1}, r"warmup must be >= 0; got -1"),
        ({"batch_sizes": (1, 0)}, r"batch_sizes must be .*got \(1, 0\)"),
        ({"threads": 0}, r"threads must be >= 1 or None; got 0"),
    ],
)
def test_latency_arguments_are_checked(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Linear(4, 2), (4,), **kwargs)  # type: ignore[arg-type]


def test_profile_leaves_the_model_unchanged() -> None:
    model = ResNetCifar(depth=8)
    model.train()
    model.layer2.eval()  # mixed modes are restored module by module
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, (3, 16, 16), batch_sizes=(2,), warmup=1, repeats=2)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    profile(model, (3, 16, 16), latency=False, device="cpu")
    with pytest.raises(ValueError, match=r"input_shape must be .*got \(3, 0\)"):
        profile(model, (3, 0), latency=False)


def test_metrics_and_table() -> None:
    result = profile(LeNet5(), (1, 28, 28), batch_sizes=(1, 64), warmup=0, repeats=1)
    keys = {
        "params",
        "params_nonzero",
        "sparsity",
        "compression_ratio",
        "macs",
        "effective_macs",
        "size_bytes",
    }
    assert set(result.as_metrics()) == {f"compress/{k}" for k in keys | {"latency_ms_b1", "latency_ms_b64"}}
    no_latency = profile(LeNet5(), (1, 28, 28), latency=False)
    assert (
        isinstance(no_latency, ModelProfile) and no_latency.latency_ms == {} == no_latency.latency_spread_ms
    )
    assert set(no_latency.as_metrics(prefix="")) == keys
    assert no_latency.as_metrics()["compress/macs"] == 2_293_000.0
    table = result.to_table()
    for name in ("conv1", "pool1", "conv2", "fc1", "fc2", "total", "431,080", "2,293,000", "batch 64"):
        assert name in table
