"""Smoke tests of the pruning benchmarks: a seconds-long ``--quick`` run of each, checking the outputs' structure.

No timing or accuracy is asserted (benchmarks measure, tests check behaviour).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from benchmarks import pruning_curve, pruning_overhead


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_pruning_overhead_quick(tmp_path: Path) -> None:
    pruning_overhead.main(["--quick", "--out", str(tmp_path)])
    assert not (tmp_path / "pruning_overhead.json").exists()  # quick runs never write the real results
    result = json.loads((tmp_path / "pruning_overhead_quick.json").read_text())
    assert {"torch", "lightning", "torch_threads"} <= set(result["meta"]["environment"])
    (model,) = result["models"]
    variants = ["none", "ours (layer)", "ModelPruning (layer)"]  # --quick times the per-layer scope only
    for clock in ("wall", "cpu"):
        for phase in ("window", "frozen"):
            rows = model["timing"][clock][phase]
            assert [r["variant"] for r in rows] == variants
            assert rows[0]["overhead_pct"] == 0.0
            for r in rows:
                assert r["steps"] > 0 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
                assert r["ci95_pct"][0] <= r["ci95_pct"][1]
    # every pruned variant reached the same final sparsity on the same schedule
    for name in variants[1:]:
        assert model["final_sparsity"][name] == pytest.approx(0.9, abs=1e-3)
    # ours: the weights, plus a boolean mask and a 0/1 float factor per pruned weight
    assert model["memory"]["ours (layer)"]["fp32_tensors"] == 2 * model["memory"]["none"]["fp32_tensors"]
    assert model["memory"]["ours (layer)"]["bool_tensors"] == model["memory"]["none"]["fp32_tensors"]
    assert model["memory"]["ModelPruning (layer)"]["tensors_per_weight"] == 3  # orig, mask, weight
    assert "pruning_event" in model["hooks"]["ours (layer)"]
    assert {"bool mul_", "float mul_"} <= set(model["mask_kernels"][0]["us"])
    md = (tmp_path / "pruning_overhead_quick.md").read_text()
    assert "## Definitions" in md and "overhead" in md and "≤ 5 %" in md


def test_pruning_curve_quick(tmp_path: Path) -> None:
    pruning_curve.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"pruning_curve_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "pruning_curve.json").exists()
    result = json.loads((tmp_path / "pruning_curve_quick.json").read_text())
    (model,) = result["models"]
    summary = model["summary"]
    assert set(summary["curves"]) == set(pruning_curve.METHODS)
    for rows in summary["curves"].values():
        assert [r["ratio"] for r in rows] == model["ratios"] == [1, 8]
        assert all(0.0 <= r["acc_mean"] <= 1.0 for r in rows)
        assert rows[0]["compression_ratio"] == pytest.approx(1.0)
        assert rows[1]["weight_sparsity"] == pytest.approx(1 - 1 / 8, abs=1e-3)
        assert 1 < rows[1]["compression_ratio"] < 8  # biases stay dense: all-parameter ratio is below 8
    assert 0.0 <= summary["dense"]["acc_mean"] <= 1.0
    md = (tmp_path / "pruning_curve_quick.md").read_text()
    assert "Compression ratio" in md and "| 8× |" in md


@pytest.mark.parametrize("name", ["binary_quantization", "dorefa_sweep", "inq"])
def test_quantization_benchmarks_quick(tmp_path: Path, name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"{name}_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / f"{name}.json").exists()  # quick runs never write the real results
    result = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert result["meta"]["quick"] and result["runs"]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in result["runs"])
    if name == "inq":  # every INQ run ends with each weight exactly 0 or a power of two of its level set
        quantized = [r for r in result["runs"] if r["bits"]]
        assert quantized and all(r["all_levels"] and r["quantized_fraction"] == 1.0 for r in quantized)
        assert all(r["max_distinct"] <= 2 ** (r["bits"] - 1) + 1 for r in quantized)
    assert "## Definitions" in (tmp_path / f"{name}_quick.md").read_text()
