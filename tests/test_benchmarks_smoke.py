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


def test_distillation_quick(tmp_path: Path) -> None:
    from benchmarks import distillation

    distillation.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"distillation_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "distillation.json").exists()  # quick runs never write the real results
    result = json.loads((tmp_path / "distillation_quick.json").read_text())
    runs = result["runs"]
    assert result["meta"]["quick"] and all(0.0 <= r["test_acc"] <= 1.0 for r in runs)
    # 2 teachers; Hinton: 2 students x (alone + 2 temperatures); MNIST-1D: 5 arms; FitNets: 3 arms
    assert len(runs) == 2 + 2 * 3 + 5 + 3
    arms = {(r["part"], r["arm"]): r for r in runs}
    assert arms[("hinton", "alone")]["loss_terms"] == {}  # the baseline is the same module without terms
    assert set(arms[("mnist1d", "AT β=100")]["loss_terms"]) == {"at"}
    assert arms[("fitnets", "FitNets+KD")]["stage1_epochs"] == 1
    summary = result["summary"]
    assert summary["hinton"]["2×800"]["temps"] == [2.0, 20.0]
    assert set(summary["acceptance"]) == {
        "hinton_gap_closed",
        "hinton_small_prefers_lower_T",
        "mnist1d_AT_improves",
        "mnist1d_KD_improves",
        "fitnets_ge_kd",
    }
    md = (tmp_path / "distillation_quick.md").read_text()
    assert "## Definitions" in md and "## Acceptance (issue 8)" in md and "Reproduce:" in md


def test_low_rank_quick(tmp_path: Path) -> None:
    from benchmarks import low_rank

    low_rank.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"low_rank_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "low_rank.json").exists()  # quick runs never write the real results
    result = json.loads((tmp_path / "low_rank_quick.json").read_text())
    assert result["meta"]["quick"] and set(result["models"]) == {"cnn", "mlp"}
    for key, data in result["models"].items():
        summary = data["summary"]
        methods = low_rank.CNN_METHODS if key == "cnn" else low_rank.MLP_METHODS
        greedy = [v for v in summary["variants"] if v["rule"] == "greedy"]
        assert sorted(v["method"] for v in greedy) == sorted(methods)
        for v in summary["variants"]:
            assert v["macs_fraction"]["mean"] <= v["budget"] + 1e-9  # every variant keeps its MAC budget
            assert 0.0 <= v["acc_before"]["mean"] <= 1.0 and v["logits_err"]["mean"] >= 0.0
            assert v["ranks_seed0"] and ("acc_after" in v) == v["finetune"]
        for rule in low_rank.UNIFORM_RULES:  # the uniform-ratio controls, over all layers and inner ones
            uniform = {v["method"] for v in summary["variants"] if v["rule"] == rule}
            assert uniform == set(low_rank.UNIFORM) & set(methods)
    for lat in result["latency"]:
        assert [c["batch"] for c in lat["cells"]] == [1, 64]
        for c in lat["cells"]:
            assert set(c["vs_best_dense"]) == set(lat["kinds"])
            for q in c["ms"].values():
                assert q["p25"] <= q["median"] <= q["p75"]
    md = (tmp_path / "low_rank_quick.md").read_text()
    assert "## Definitions" in md and "asymmetric" in md and "uptime" in md


def test_dynamic_inference_quick(tmp_path: Path) -> None:
    from benchmarks import dynamic_inference as di

    di.main(["--quick", "--out", str(tmp_path), "--workdir", str(tmp_path / "models")])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"dynamic_inference_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "dynamic_inference.json").exists()  # quick runs never write the real results
    result = json.loads((tmp_path / "dynamic_inference_quick.json").read_text())
    assert result["meta"]["quick"] and result["meta"]["seeds"] == [0]
    assert set(result["meta"]["parts"]) == set(di.PARTS)
    assert {r["part"] for r in result["runs"]} == set(di.PARTS)
    assert all(r["seed"] == 0 and 0.0 <= r["test_acc"] <= 1.0 for r in result["runs"])
    # (1) early exits: every exit, the whole budget sweep, the independent baselines, an operating point, timing
    ee = result["early_exit"]["summary"]
    assert ee["seeds"] == [0] and [e["exit"] for e in ee["exits"]] == [1, 2, 3]
    assert [e["macs"] for e in ee["exits"]] == sorted(e["macs"] for e in ee["exits"])
    assert len(ee["curve"]) == 40 and [b["blocks"] for b in ee["baselines"]] == list(di.BASELINE_BLOCKS)
    (point,) = ee["operating_points"]
    assert len(point["thresholds"]) == 2 and point["seed"] == 0
    timing = result["early_exit"]["timing"]
    assert set(timing["ms"]) == {di.EE_VARIANT, di.WHOLE, di.WHOLE_ALL}  # no compile in --quick
    assert set(timing["speedup"]) == {di.WHOLE, di.WHOLE_ALL}
    assert timing["agreement"] >= 0.99 and sum(timing["exit_fractions"]) == pytest.approx(1.0)
    # (2) SkipNet: the ungated baseline and the skip rewards, gates initialized open and at random (no longer
    # budget in --quick)
    skip = {r["arm"]: r for r in result["skipnet"]["summary"]["rows"]}
    assert set(skip) == {
        di.UNGATED,
        *(di.skip_arm(a, init) for a in di.ALPHAS for init in ("open", "random")),
    }
    assert {r["gate_init"] for a, r in skip.items() if a != di.UNGATED} == {"open", "random"}
    assert skip[di.UNGATED]["gates"] == 0 and all(r["gates"] == 7 for a, r in skip.items() if a != di.UNGATED)
    assert all(0.0 <= r["skip_ratio"]["mean"] <= 1.0 and r["acc"]["values"] for r in skip.values())
    assert set(result["skipnet"]["timing"]["speedup"]) == set(skip) - {di.UNGATED}
    # (3) CondConv against the static CNN of the same widths and the one widened to its MACs
    cond = {r["arm"]: r for r in result["condconv"]["summary"]["rows"]}
    assert set(cond) == {di.CONDCONV, di.STATIC, di.WIDE}
    assert cond[di.STATIC]["macs"] < cond[di.CONDCONV]["macs"] and cond[di.WIDE]["widths"][0] > 32
    assert set(result["condconv"]["timing"]["ms"]) == set(cond)
    md = (tmp_path / "dynamic_inference_quick.md").read_text()
    for heading in ("## Definitions", "## (1) Early exits", "## (2) SkipNet", "## (3) CondConv"):
        assert heading in md
