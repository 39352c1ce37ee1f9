"""Per-layer pruning sensitivity (core.sensitivity, Li et al. arXiv 1608.08710 §4.1): one group at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from effdl_lightning.core.sensitivity import (
    conv_linear_macs,
    plot_sensitivity,
    sensitivity_analysis,
    sensitivity_table,
)
from effdl_lightning.measure import profile
from effdl_lightning.models import create

SHAPE = (3, 8, 8)
RATIOS = (0.25, 0.5, 0.75)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(64, *SHAPE)
    with torch.no_grad():
        labels = model(x).argmax(1)  # the unpruned model scores 1.0
    return model, x, labels


def _agreement(x: Tensor, labels: Tensor):
    def evaluate(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return (m(x).argmax(1) == labels).float().mean().item()

    return evaluate


def test_curves_start_at_the_unpruned_model_and_prune_only_the_named_group() -> None:
    model, x, labels = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[dict[str, int]] = []
    score = _agreement(x, labels)

    def evaluate(m: nn.Module) -> float:
        seen.append({n: c.out_channels for n, c in m.named_modules() if isinstance(c, nn.Conv2d)})
        seen[-1]["fc.in"] = m.fc.in_features
        return score(m)

    rows = sensitivity_analysis(model, SHAPE, evaluate, ratios=RATIOS, groups=["conv2"])
    assert [r["ratio"] for r in rows] == [0.0, *RATIOS]
    assert {r["group"] for r in rows} == {"conv2"}
    first = rows[0]
    assert first["accuracy"] == 1.0 and first["removed"] == 0
    assert first["macs_fraction"] == 1.0 and first["params_fraction"] == 1.0
    # the unpruned model is evaluated once, then one pruned copy per ratio: conv2 (and fc's inputs) only
    assert seen[0] == {"conv1": 8, "conv2": 12, "fc.in": 12}
    for row, shapes in zip(rows[1:], seen[1:], strict=True):
        assert row["removed"] == int(row["ratio"] * 12) and row["kept"] == 12 - row["removed"]
        assert shapes == {"conv1": 8, "conv2": row["kept"], "fc.in": row["kept"]}
        assert row["macs_fraction"] < 1.0 and row["params"] < rows[0]["params"]
    assert [r["macs_fraction"] for r in rows] == sorted((r["macs_fraction"] for r in rows), reverse=True)
    # the model itself is never changed
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_l1_removes_the_filters_with_the_smallest_l1_norm() -> None:
    model, _, _ = _setup()
    norms = model.conv1.weight.detach().abs().sum((1, 2, 3))
    kept_norms: list[Tensor] = []

    def evaluate(m: nn.Module) -> float:
        kept_norms.append(m.conv1.weight.detach().abs().sum((1, 2, 3)))
        return 0.0

    sensitivity_analysis(model, SHAPE, evaluate, ratios=(0.5,), groups=["conv1"])
    expected = norms.sort(descending=True).values[:4]
    torch.testing.assert_close(kept_norms[-1].sort(descending=True).values, expected)


def test_every_prunable_group_by_default_and_a_coupled_residual_stream() -> None:
    torch.manual_seed(0)
    shape = (3, 16, 16)
    model = create("resnet_cifar", num_classes=10, input_shape=shape, depth=8).eval()
    rows = sensitivity_analysis(model, shape, lambda m: 0.5, ratios=(0.5,))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert "fc" not in groups  # the model output is never prunable
    assert {"conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"} <= set(groups)
    # a producer's name selects its group: layer1.0.conv2 writes the stem's residual stream
    (stream,) = {
        r["group"]
        for r in sensitivity_analysis(model, shape, lambda m: 0.5, (0.5,), groups=["layer1.0.conv2"])
    }
    assert stream == "conv1"
    row = next(r for r in rows if r["group"] == "conv1" and r["ratio"] == 0.5)
    # option-A shortcuts carry the stem's channels through every stage; the zero-padded ones are kept
    assert set(row["producers"]) == {"conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"}
    assert row["channels"] == 64 and row["removed"] == 8  # half of the 16 prunable channels


def test_unknown_or_frozen_group_names_and_bad_arguments_raise() -> None:
    model, x, labels = _setup()
    evaluate = _agreement(x, labels)
    with pytest.raises(
        ValueError, match=r"unknown channel group 'conv9'; known prunable groups: \['conv1', 'conv2'\]"
    ):
        sensitivity_analysis(model, SHAPE, evaluate, groups=["conv9"])
    with pytest.raises(ValueError, match=r"'fc' cannot be pruned \(model output\).*\['conv1', 'conv2'\]"):
        sensitivity_analysis(model, SHAPE, evaluate, groups=["fc"])
    with pytest.raises(ValueError, match="criterion must be one of"):
        sensitivity_analysis(model, SHAPE, evaluate, criterion="l3")
    with pytest.raises(ValueError, match=r"ratios must be .* in \[0, 1\), got \[0.5, 1.0\]"):
        sensitivity_analysis(model, SHAPE, evaluate, ratios=(0.5, 1.0))
    with pytest.raises(ValueError, match="value must be one of"):
        sensitivity_table([], value="latency")


def test_table_plot_and_macs(tmp_path: Path) -> None:
    model, x, labels = _setup()
    rows = sensitivity_analysis(model, SHAPE, _agreement(x, labels), ratios=RATIOS, criterion="random")
    table = sensitivity_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| group | channels | 0 | 0.25 | 0.5 | 0.75 |"
    assert lines[2].startswith("| conv1 | 8 | 1.0000 |") and lines[3].startswith("| conv2 | 12 | 1.0000 |")
    assert "| conv2 | 12 | 1.00 |" in sensitivity_table(rows, "macs_fraction", "{:.2f}")
    png = plot_sensitivity(rows, tmp_path / "s.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert conv_linear_macs(model, x) == profile(model, SHAPE, latency=False).macs


def test_the_core_module_does_not_import_matplotlib() -> None:
    code = "import sys, effdl_lightning.core.sensitivity; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
