"""Low-rank factorization (SVD, Jaderberg et al., Zhang et al.): accuracy vs MACs, rank selection, latency.

Models, on the offline MNIST subset (1×28×28, the stratified 3,500 / 500 / 1,000 split of each seed, no
augmentation): VGG-small (three 3×3 conv + BN + ReLU + max-pool stages, 32/64/128 channels, a linear head) as
the CNN and LeNet-300-100 as the MLP. Per seed one dense model is trained (the baseline) and reused by every
variant; each variant factorizes a copy with :func:`effdl_lightning.core.lowrank.low_rank_` (the function the
``LowRankFactorization`` callback calls at its conversion epoch) on 8 training batches of 64 images (calibration),
is tested, is fine-tuned with the same budget as every other variant, and is tested again.

(1) *Accuracy vs MACs*: every method (``svd`` on linears and convs; ``jaderberg`` (filter reconstruction) and
    ``jaderberg_data`` (data reconstruction, 25 L-BFGS steps) on convs; ``zhang`` (linear PCA of the responses) and
    ``zhang_asymmetric`` on linears and convs) at whole-model MAC budgets (0.5× and 0.25× for the CNN; 0.5×,
    0.25×, 0.125× for the MLP), per-layer ranks chosen by Zhang et al.'s greedy selection (``mac_budget=``),
    before and after fine-tuning; the dense model fine-tuned with the same budget is the control.
(2) *Zhang asymmetric vs linear without fine-tuning*: test accuracy, the relative error of the logits against
    the dense model, and each factorized layer's response error in the approximated network (what the asymmetric
    fit minimizes), at the greedy ranks of (1) and at a uniform rank ratio with the same MAC budget.
(3) *Energy-based rank selection vs a uniform rank ratio at equal MACs*: the greedy ranks of (1) against one rank
    ratio (``rank_ratio=``), the largest whose MACs stay within the same budget (bisection), over all layers and
    with the first conv and the classifier left dense (``exclude=``), for ``svd`` and ``zhang_asymmetric``, before
    and after the same fine-tune (and ``zhang`` before it).
(4) *Latency*: the seed-0 factorized architectures of (1) (rebuilt from their ``low_rank`` records with
    :func:`~effdl_lightning.core.lowrank.apply_low_rank_entry`; latency does not depend on the weights' values)
    against the dense model on eager PyTorch, ``torch.compile`` (inductor, ``freezing=True``) and ONNX Runtime
    (``torch.onnx.export(dynamo=True)``), 1 thread, batch 1 and 64, interleaved round-robin in one process
    (the helpers of ``benchmarks/structured_pruning.py``); as a what-if, each ≤ 0.5× architecture with its ranks
    rounded to a multiple of 8 (timed only).

Run: ``python -m benchmarks --only low_rank`` (about 30 minutes on 2 shared cores, one process, one torch
thread); ``--quick`` (seconds) writes ``low_rank_quick.*``; finished (model, seed) runs are kept in
``low_rank_runs.jsonl`` and not rerun (``--fresh`` reruns them); ``--part latency`` re-times from that file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    DEFINITIONS,
    RESULTS,
    command_line,
    environment,
    md_table,
    mean_std,
    output_stem,
    quiet,
    seed_all,
    write_results,
)
from benchmarks.pruning_curve import Budget, make_module
from benchmarks.sparse_inference import time_round_robin
from benchmarks.structured_pruning import (
    COMPILE,
    EAGER,
    ORT,
    RUNTIMES,
    build_variants,
    export_onnx,
    fit,
    summarize_cell,
    version,
)
from effdl_lightning.core.lowrank import (
    CHANNEL_METHODS,
    SPATIAL_METHODS,
    LowRankConfig,
    apply_low_rank_entry,
    low_rank_,
)
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.models import create

NAME = "low_rank"
MNIST = (1, 28, 28)
CNN_METHODS = ("svd", "jaderberg", "jaderberg_data", "zhang", "zhang_asymmetric")
MLP_METHODS = ("svd", "zhang", "zhang_asymmetric")
#: uniform-rank controls of (3): method -> fine-tuned too
UNIFORM: dict[str, bool] = {"svd": True, "zhang": False, "zhang_asymmetric": True}
#: the uniform rules: every layer, or every layer but the model's ``edge`` layers (first conv, classifier)
UNIFORM_RULES = ("uniform", "uniform_inner")
ROUND_TO = 8  # the channel block of the CPU conv/GEMM kernels (AVX2): the greedy_x8 rule's round_to
RULE_TEXT = {
    "greedy": "greedy",
    "greedy_x8": f"greedy, ranks ×{ROUND_TO}",
    "uniform": "uniform (all layers)",
    "uniform_inner": "uniform (edge layers dense)",
}
CALIBRATION_BATCHES = 8
GOAL = 1.5  # speedup at batch 64 at ≤ 0.5× MACs, against the fastest dense runtime


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    name: str
    dense_epochs: int
    budgets: tuple[float, ...]
    methods: tuple[str, ...]
    edge: tuple[str, ...]  # left dense by the "uniform_inner" rule
    edge_text: str
    rounded: bool = False  # also run every greedy variant with ranks on multiples of ROUND_TO ("greedy_x8")


MODELS = (
    ModelSpec(
        "cnn",
        "VGG-small",
        "vgg_small",
        4,
        (0.5, 0.25),
        CNN_METHODS,
        ("features.0", "head"),
        "first conv (1 input channel) and classifier",
        rounded=True,
    ),
    ModelSpec(
        "mlp", "LeNet-300-100", "lenet300", 10, (0.5, 0.25, 0.125), MLP_METHODS, ("fc3",), "classifier"
    ),
)


def macs(model: nn.Module) -> float:
    return float(profile(model, MNIST, latency=False).macs)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- rank rules -----------------------------------------------------------------------------------------------


def uniform_ratio(
    name: str, budget: float, exclude: tuple[str, ...] = (), iterations: int = 14
) -> dict[str, float]:
    """The largest uniform rank ratio whose channel-factorized model keeps ≤ ``budget`` × the MACs (bisection).

    ``exclude``: layers left dense (``low_rank_``'s ``exclude`` patterns).
    The MACs of ``svd``, ``zhang`` and ``zhang_asymmetric`` factors depend only on the ranks, and ``rank_ratio``
    ranks only on each layer's full rank, so one bisection with ``svd`` on an untrained model serves all three.
    """
    model = create(name, num_classes=10, input_shape=MNIST).eval()
    batch = [torch.randn(2, *MNIST)]

    def fraction(ratio: float) -> float:
        result = low_rank_(
            copy.deepcopy(model), batch, LowRankConfig(rank_ratio=ratio), exclude=list(exclude)
        )
        return result.macs_after / result.macs_before

    if fraction(1.0) <= budget:
        return {"ratio": 1.0, "macs_fraction": fraction(1.0)}
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mid > 0 and fraction(mid) <= budget:
            lo = mid
        else:
            hi = mid
    if lo == 0.0:
        raise ValueError(f"no uniform rank ratio reaches {budget}× MACs on {name}")
    return {"ratio": lo, "macs_fraction": fraction(lo)}


def config_for(method: str, rule: str, budget: float, ratio: float | None, data_steps: int) -> LowRankConfig:
    if rule == "greedy":
        return LowRankConfig.from_method(method, mac_budget=budget, data_steps=data_steps)
    if rule == "greedy_x8":
        return LowRankConfig.from_method(method, mac_budget=budget, round_to=ROUND_TO, data_steps=data_steps)
    assert ratio is not None and method in CHANNEL_METHODS
    return LowRankConfig.from_method(method, rank_ratio=ratio, data_steps=data_steps)


# -- one (model, seed) ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module, reference: nn.Module | None, batches: list[Any], layers: list[str]
) -> dict[str, Any]:
    """Test accuracy; with ``reference``, the logits' and every named layer's relative output error against it.

    A layer's error is ``‖ŷ − y‖ / ‖y‖`` over the test set, ``ŷ`` its factors' output in the approximated network
    (inputs from the approximated layers before it), ``y`` the dense layer's output in the dense network.
    """
    model.eval()
    out: dict[str, Any] = {}
    seen: dict[str, dict[str, torch.Tensor]] = {"model": {}, "reference": {}}
    handles = []
    if reference is not None:
        reference.eval()
        for which, net in (("model", model), ("reference", reference)):
            for name in layers:
                hook = partial(lambda store, n, m, a, o: store.__setitem__(n, o.detach()), seen[which], name)
                handles.append(net.get_submodule(name).register_forward_hook(hook))
    num = dict.fromkeys(["logits", *layers], 0.0)
    den = dict.fromkeys(["logits", *layers], 0.0)
    correct = total = 0
    try:
        for x, y in batches:
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
            if reference is None:
                continue
            pairs = {"logits": (logits, reference(x))}
            pairs |= {n: (seen["model"][n], seen["reference"][n]) for n in layers}
            for key, (a, b) in pairs.items():
                num[key] += float((a - b).pow(2).sum())
                den[key] += float(b.pow(2).sum())
    finally:
        for h in handles:
            h.remove()
    out["acc"] = correct / total
    if reference is not None:
        err = {k: (num[k] / den[k]) ** 0.5 if den[k] > 0 else 0.0 for k in num}
        out["logits_err"] = err.pop("logits")
        out["layer_err"] = err
    return out


def variant_jobs(spec: ModelSpec) -> list[tuple[str, str, float, bool]]:
    """``(rule, method, budget, fine-tune)`` of every variant of ``spec``."""
    jobs = [("greedy", m, b, True) for b in spec.budgets for m in spec.methods]
    if spec.rounded:
        jobs += [("greedy_x8", m, b, True) for b in spec.budgets for m in spec.methods]
    for rule in UNIFORM_RULES:
        jobs += [(rule, m, b, ft) for b in spec.budgets for m, ft in UNIFORM.items() if m in spec.methods]
    return jobs


def run_seed(
    spec: ModelSpec,
    seed: int,
    budget: Budget,
    ratios: dict[tuple[str, float], float],
    calibration: int,
    data_steps: int,
    keep_entries: bool,
    test_batches: int | None = None,
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the dense model of one seed, then factorize, test, fine-tune and test every variant.

    ``ratios``: the uniform rank ratio per ``(rule, budget)``. ``test_batches`` limits the test set (smoke runs
    only). ``existing``: a recorded row of this seed; only its missing variants run (the dense model is retrained
    the same way, deterministic on one CPU thread: its accuracy is checked against the record) and are merged in.
    """
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    dm = MNISTSubsetDataModule(batch_size=budget.batch_size, seed=seed, augment=False)
    dm.setup()
    tests = list(islice(dm.test_dataloader(), test_batches))
    seed_all(seed)
    dense = create(spec.name, num_classes=10, input_shape=MNIST)
    dense_budget = dataclasses.replace(budget, dense_epochs=spec.dense_epochs)
    fit(make_module(dense, dense_budget, False), dm, spec.dense_epochs, dense_budget)
    dense.eval()
    row: dict[str, Any] = {"model": spec.key, "seed": seed, "budget": budget.describe()}
    row["dense"] = {
        "acc": evaluate(dense, None, tests, [])["acc"],
        "macs": macs(dense),
        "params": params(dense),
    }
    row["dense"]["train_s"] = time.perf_counter() - start
    seed_all(seed)
    batches = [x for x, _ in islice(dm.train_dataloader(), calibration)]
    jobs = variant_jobs(spec)
    if existing is not None:
        if existing["dense"]["acc"] != row["dense"]["acc"]:
            raise RuntimeError(
                f"{spec.label} seed {seed}: the retrained dense model ({row['dense']['acc']}) differs from the "
                f"recorded one ({existing['dense']['acc']}); rerun with --fresh"
            )
        have = {(v["rule"], v["method"], v["budget"]) for v in existing["variants"]}
        jobs = [j for j in jobs if j[:3] not in have]
        row = {**existing, "variants": list(existing["variants"]), "resumed_s": existing["seconds"]}
    else:
        # the control: the dense model fine-tuned with the same budget as every factorized one
        tick = time.perf_counter()
        control = copy.deepcopy(dense)
        seed_all(seed)
        fit(make_module(control, budget, True), dm, budget.finetune_epochs, budget)
        row["dense_ft"] = {
            "acc": evaluate(control, None, tests, [])["acc"],
            "ft_s": time.perf_counter() - tick,
        }
        row["variants"] = []
    for rule, method, mac_budget, finetune in jobs:
        tick = time.perf_counter()
        model = copy.deepcopy(dense)
        ratio = ratios[(rule, mac_budget)] if rule in UNIFORM_RULES else None
        exclude = list(spec.edge) if rule == "uniform_inner" else None
        config = config_for(method, rule, mac_budget, ratio, data_steps)
        result = low_rank_(model, batches, config, exclude=exclude)
        fit_s = time.perf_counter() - tick
        names = [layer.name for layer in result.layers]
        v: dict[str, Any] = {"rule": rule, "method": method, "budget": mac_budget, "ratio": ratio}
        v |= {"finetune": finetune, "macs": macs(model), "params": params(model), "fit_s": fit_s}
        v["macs_fraction"] = v["macs"] / row["dense"]["macs"]
        v["core_macs_fraction"] = result.macs_after / result.macs_before
        v["ranks"] = {
            layer.name: [layer.rank, layer.full_rank, round(layer.energy, 4)] for layer in result.layers
        }
        v["skipped"] = result.skipped
        before = evaluate(model, dense, tests, names)
        v |= {
            "acc_before": before["acc"],
            "logits_err": before["logits_err"],
            "layer_err": before["layer_err"],
        }
        if keep_entries:
            v["entry"] = result.entry
        if finetune:
            tick = time.perf_counter()
            seed_all(seed)  # the same data order for every fine-tune of this seed
            fit(make_module(model, budget, True), dm, budget.finetune_epochs, budget)
            v["acc_after"] = evaluate(model, None, tests, [])["acc"]
            v["ft_s"] = time.perf_counter() - tick
        row["variants"].append(v)
        after = f" -> {v['acc_after']:.4f}" if finetune else ""
        print(
            f"  {spec.label} seed {seed} {rule} {method} ≤{mac_budget}×: MACs {v['macs_fraction']:.3f}×, acc "
            f"{v['acc_before']:.4f}{after} (logits err {v['logits_err']:.3f}; "
            f"{time.perf_counter() - tick + fit_s:.0f} s)",
            flush=True,
        )
    row["seconds"] = time.perf_counter() - start + row.get("resumed_s", 0.0)
    return row


# -- summaries ------------------------------------------------------------------------------------------------


def _stat(values: list[float]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "values": values}


def summarize(spec: ModelSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"dense": _stat([r["dense"]["acc"] for r in rows])}
    out["dense_ft"] = _stat([r["dense_ft"]["acc"] for r in rows])
    out["dense_macs"], out["dense_params"] = rows[0]["dense"]["macs"], rows[0]["dense"]["params"]
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        for v in r["variants"]:
            groups.setdefault((v["rule"], v["method"], v["budget"]), []).append(v)
    out["variants"] = []
    for (rule, method, budget), vs in groups.items():
        entry: dict[str, Any] = {"rule": rule, "method": method, "budget": budget, "ratio": vs[0]["ratio"]}
        entry["finetune"] = vs[0]["finetune"]
        for key in ("macs_fraction", "acc_before", "logits_err"):
            entry[key] = _stat([v[key] for v in vs])
        entry["params_fraction"] = _stat([v["params"] / out["dense_params"] for v in vs])
        if vs[0]["finetune"]:
            entry["acc_after"] = _stat([v["acc_after"] for v in vs])
        layers = list(vs[0]["layer_err"])
        entry["layer_err"] = {n: _stat([v["layer_err"].get(n, float("nan")) for v in vs]) for n in layers}
        entry["ranks_seed0"] = vs[0]["ranks"]
        entry["skipped_seed0"] = vs[0]["skipped"]
        entry["fit_s"] = _stat([v["fit_s"] for v in vs])
        out["variants"].append(entry)
    return out


def find(summary: dict[str, Any], rule: str, method: str, budget: float) -> dict[str, Any] | None:
    return next(
        (v for v in summary["variants"] if (v["rule"], v["method"], v["budget"]) == (rule, method, budget)),
        None,
    )


# -- (4) latency ----------------------------------------------------------------------------------------------


def structure(entry: dict[str, Any]) -> str:
    """The architecture an entry builds (channel or spatial factors and their ranks), as a comparable key."""
    layers = {
        n: [s["method"] in SPATIAL_METHODS, s["rank"], s["factor_bias"]] for n, s in entry["layers"].items()
    }
    return json.dumps(layers, sort_keys=True)


def row0_full_rank(variant: dict[str, Any], layer: str) -> int:
    """The full rank of a factorized layer of a recorded variant."""
    return int(variant["ranks"][layer][1])


def latency(
    spec: ModelSpec,
    row0: dict[str, Any],
    batches: tuple[int, ...],
    rounds: int,
    use_compile: bool,
    use_ort: bool,
) -> dict[str, Any]:
    """Time the seed-0 greedy architectures of every budget against the dense model, 1 thread.

    With ``spec.rounded`` the ``greedy_x8`` architectures (ranks chosen on multiples of :data:`ROUND_TO`, trained
    and tested in (1)) are timed next to them; otherwise a what-if: each ≤ 0.5× architecture with every rank
    rounded to the nearest multiple of :data:`ROUND_TO` (at least :data:`ROUND_TO`, at most the full rank), its
    MACs given, its accuracy not measured.
    """
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"dense": create(spec.name, num_classes=10, input_shape=MNIST).eval()}
    out: dict[str, Any] = {"model": spec.label, "name": spec.name, "kinds": {}, "notes": {}, "cells": []}
    seen: dict[str, str] = {}
    for v in row0["variants"]:
        if v["rule"] not in ("greedy", "greedy_x8"):
            continue
        key = structure(v["entry"])
        kind = f"{v['method']}@{v['budget']}" + ("-x8" if v["rule"] == "greedy_x8" else "")
        if key in seen:  # e.g. jaderberg_data = jaderberg's ranks, zhang_asymmetric = zhang's
            out["kinds"][seen[key]]["same_as"].append(v["method"])
            continue
        seen[key] = kind
        model = create(spec.name, num_classes=10, input_shape=MNIST)
        apply_low_rank_entry(model, v["entry"])
        models[kind] = model.eval()
        entries = [(kind, v["entry"], None)]
        if v["budget"] == 0.5 and not spec.rounded:
            rounded = copy.deepcopy(v["entry"])
            for n, layer in rounded["layers"].items():
                full = row0_full_rank(v, n)
                layer["rank"] = min(full, max(ROUND_TO, ROUND_TO * round(layer["rank"] / ROUND_TO)))
            if rounded != v["entry"]:
                entries.append((f"{kind}-x{ROUND_TO}", rounded, kind))
        for name, entry, origin in entries:
            if origin is not None:
                model = create(spec.name, num_classes=10, input_shape=MNIST)
                apply_low_rank_entry(model, entry)
                models[name] = model.eval()
            out["kinds"][name] = {
                "method": v["method"],
                "rule": v["rule"],
                "budget": v["budget"],
                "macs_fraction": macs(models[name]) / macs(models["dense"]),
                "params_fraction": params(models[name]) / params(models["dense"]),
                "ranks": {n: s["rank"] for n, s in entry["layers"].items()},
                "same_as": [],
                "rounded_from": origin,
            }
    onnx: dict[str, bytes] = {}
    if not use_ort:
        out["notes"][ORT] = "skipped (--quick)"
    elif version("onnxruntime") is None:
        out["notes"][ORT] = "onnxruntime not installed (pip install -e .[bench])"
    else:
        for kind, model in models.items():
            try:
                onnx[kind] = export_onnx(model, MNIST)
            except Exception as error:  # a runtime that fails is a result
                out["notes"][f"{kind} {ORT}"] = f"export failed: {type(error).__name__}: {error}"[:300]
    # every variant shares the model class's forward: dynamo's per-function recompile limit (8) would silently
    # leave the later variants in eager mode under the torch.compile label
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, 4 * len(models))
    with num_threads(1):
        for batch in batches:
            x = torch.randn(batch, *MNIST)
            variants, compile_s = build_variants(models, onnx, x, 1, use_compile, out["notes"])
            with torch.inference_mode():
                models["dense"](x)
                tick = time.perf_counter()
                models["dense"](x)
                once = time.perf_counter() - tick
            inner = max(1, min(200, round(0.05 / max(once, 1e-6))))  # ≥ 50 ms per sample
            samples = time_round_robin(variants, x, warmup=3, rounds=rounds, inner=inner)
            cell: dict[str, Any] = {"threads": 1, "batch": batch, "inner_calls": inner, "rounds": rounds}
            cell |= {"compile_s": compile_s} | summarize_cell(samples, list(models))
            out["cells"].append(cell)
            best = {k: f"{v['ratio_of_medians']:.2f}×" for k, v in cell["vs_best_dense"].items()}
            print(f"  {spec.label} b{batch}: best vs best {best}", flush=True)
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = limit
    return out


# -- output ---------------------------------------------------------------------------------------------------


def _pm(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    if not stat:
        return "-"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _ms(q: dict[str, float]) -> str:
    return f"{q['median']:.3f} ({q['p25']:.3f}-{q['p75']:.3f})"


def _x(s: dict[str, float]) -> str:
    return f"{s['ratio_of_medians']:.2f}× ({s['paired_p25']:.2f}-{s['paired_p75']:.2f})"


def _ranks(ranks: dict[str, list[Any]]) -> str:
    return ", ".join(f"{n} {r[0]}/{r[1]}" for n, r in ranks.items()) or "none"


def _budgets(result: dict[str, Any], spec: ModelSpec) -> list[float]:
    """The budgets this result ran for ``spec`` (a quick run runs fewer)."""
    return list(result["models"].get(spec.key, {}).get("budgets", []))


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    """Whether each measurable acceptance point holds, with the numbers behind it."""
    out: dict[str, Any] = {
        "asym_ge_linear": [],
        "greedy_ge_uniform": [],
        "latency": [],
        "latency_x8": [],
        "latency_rounded": [],
    }
    for spec in MODELS:
        summary = result["models"].get(spec.key, {}).get("summary")
        if not summary:
            continue
        for rule in ("greedy", *UNIFORM_RULES):
            for b in _budgets(result, spec):
                lin, asym = find(summary, rule, "zhang", b), find(summary, rule, "zhang_asymmetric", b)
                if lin and asym:
                    out["asym_ge_linear"].append(
                        {
                            "model": spec.label,
                            "rule": rule,
                            "budget": b,
                            "acc": [lin["acc_before"]["mean"], asym["acc_before"]["mean"]],
                            "logits_err": [lin["logits_err"]["mean"], asym["logits_err"]["mean"]],
                            "holds": asym["acc_before"]["mean"] >= lin["acc_before"]["mean"],
                        }
                    )
        for rule, method, b in (
            (r, m, b) for r in UNIFORM_RULES for m in UNIFORM for b in _budgets(result, spec)
        ):
            g, u = find(summary, "greedy", method, b), find(summary, rule, method, b)
            if g and u:
                key = "acc_after" if UNIFORM[method] else "acc_before"
                out["greedy_ge_uniform"].append(
                    {
                        "model": spec.label,
                        "rule": rule,
                        "method": method,
                        "budget": b,
                        "metric": key,
                        "macs": [g["macs_fraction"]["mean"], u["macs_fraction"]["mean"]],
                        "acc": [g[key]["mean"], u[key]["mean"]],
                        "acc_before": [g["acc_before"]["mean"], u["acc_before"]["mean"]],
                        "holds": g[key]["mean"] >= u[key]["mean"],
                    }
                )
    for lat in result.get("latency", []):
        for c in lat["cells"]:
            if c["batch"] != 64:
                continue
            for kind, s in c["vs_best_dense"].items():
                info = lat["kinds"][kind]
                if info["budget"] == 0.5:
                    group = "latency_rounded" if info.get("rounded_from") else "latency"
                    if info.get("rule") == "greedy_x8":
                        group = "latency_x8"
                    out[group].append(
                        {
                            "model": lat["model"],
                            "kind": kind,
                            "macs_fraction": info["macs_fraction"],
                            "speedup": s["ratio_of_medians"],
                            "best": c["best"][kind],
                            "holds": s["ratio_of_medians"] >= GOAL,
                        }
                    )
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    v = result["verdicts"]
    lines = []
    for spec in MODELS:
        summary = result["models"].get(spec.key, {}).get("summary")
        if not summary:
            continue
        best = []
        for b in _budgets(result, spec):
            points = [find(summary, "greedy", m, b) for m in spec.methods]
            p = max((p for p in points if p), key=lambda p: p["acc_after"]["mean"])
            best.append(f"≤{b}× MACs: {p['method']} {_pm(p['acc_after'])} %")
        lines.append(
            f"- (1) {spec.label}: dense {_pm(summary['dense'])} % (dense + the same fine-tune "
            f"{_pm(summary['dense_ft'])} %); best method after fine-tuning at " + "; ".join(best) + "."
        )
        if spec.rounded:
            pairs = [
                (find(summary, "greedy", m, b), find(summary, "greedy_x8", m, b))
                for b in _budgets(result, spec)
                for m in spec.methods
            ]
            parts = [
                f"{g['method']} ≤{g['budget']}× {_pm(g['acc_after'])} → {_pm(x['acc_after'])}"
                for g, x in pairs
                if g and x
            ]
            if parts:
                lines.append(
                    f"- (1) {spec.label}, greedy ranks on multiples of {ROUND_TO} (`round_to={ROUND_TO}`) against "
                    "free ranks, after fine-tuning (%): " + "; ".join(parts) + "."
                )
    if v["asym_ge_linear"]:
        entries = v["asym_ge_linear"]
        lines.append(
            f"- (2) Zhang asymmetric ≥ linear without fine-tuning (mean test accuracy %, linear → asymmetric; "
            f"logits error) in {sum(e['holds'] for e in entries)} of {len(entries)} settings:"
        )
        for model, rule in dict.fromkeys((e["model"], e["rule"]) for e in entries):
            parts = [
                f"≤{e['budget']}× {100 * e['acc'][0]:.2f} → {100 * e['acc'][1]:.2f}"
                f" ({e['logits_err'][0]:.3f} → {e['logits_err'][1]:.3f})" + ("" if e["holds"] else " ✗")
                for e in entries
                if (e["model"], e["rule"]) == (model, rule)
            ]
            lines.append(f"  - {model}, {RULE_TEXT[rule]} ranks: " + "; ".join(parts))
    if v["greedy_ge_uniform"]:
        entries = v["greedy_ge_uniform"]
        lines.append(
            f"- (3) energy-based greedy ranks ≥ a uniform rank ratio at the same MAC budget in "
            f"{sum(e['holds'] for e in entries)} of {len(entries)} settings (mean test accuracy %, greedy vs "
            "uniform; after fine-tuning, `zhang` before it; ✗ = greedy lower):"
        )
        for model, rule in dict.fromkeys((e["model"], e["rule"]) for e in entries):
            parts = [
                f"{e['method']} ≤{e['budget']}× {100 * e['acc'][0]:.2f} vs {100 * e['acc'][1]:.2f}"
                + ("" if e["holds"] else " ✗")
                for e in entries
                if (e["model"], e["rule"]) == (model, rule)
            ]
            lines.append(f"  - {model}, {RULE_TEXT[rule]}: " + "; ".join(parts))
    if v["latency"]:
        parts = [
            f"{e['model']} {e['kind']} ({e['macs_fraction']:.3f}× MACs): **{e['speedup']:.2f}×** "
            f"({e['best'].split(' ', 1)[1]})" + (" ✓" if e["holds"] else "")
            for e in v["latency"]
        ]
        lines.append(
            f"- (4) batch 64, 1 thread, fastest factorized runtime vs fastest dense runtime (goal ≥ {GOAL}×, ✓ = "
            "met): " + "; ".join(parts) + "."
        )
    if v["latency_x8"]:
        parts = [
            f"{e['model']} {e['kind']} ({e['macs_fraction']:.3f}× MACs): **{e['speedup']:.2f}×** "
            f"({e['best'].split(' ', 1)[1]})" + (" ✓" if e["holds"] else "")
            for e in v["latency_x8"]
        ]
        lines.append(
            f"- (4) the same at ranks chosen on multiples of {ROUND_TO} (`round_to={ROUND_TO}`, trained and "
            "tested in (1)): " + "; ".join(parts) + "."
        )
    if v["latency_rounded"]:
        parts = [
            f"{e['model']} {e['kind']} ({e['macs_fraction']:.3f}× MACs): **{e['speedup']:.2f}×** "
            f"({e['best'].split(' ', 1)[1]})" + (" ✓" if e["holds"] else "")
            for e in v["latency_rounded"]
        ]
        lines.append(
            f"- (4) what-if, the same architectures with every rank rounded to a multiple of {ROUND_TO} (accuracy "
            "not measured; MACs change slightly): " + "; ".join(parts) + "."
        )
    return lines


def accuracy_markdown(result: dict[str, Any], spec: ModelSpec) -> list[str]:
    data = result["models"][spec.key]
    s = data["summary"]
    lines = [
        "",
        f"## (1) {spec.label}: accuracy vs MACs, greedy ranks under a MAC budget",
        "",
        f"Dense: {s['dense_macs'] / 1e6:.3f}M MACs, {s['dense_params'] / 1e3:.1f}k params, "
        f"{spec.dense_epochs} epochs. Seeds {data['seeds']}; test accuracy in % (1,000 images), mean ± std. "
        "*Logits err* = ‖logits − dense logits‖ / ‖dense logits‖ over the test set, before fine-tuning. Ranks: "
        "seed 0, rank/full rank per factorized layer (the others stay dense).",
        "",
    ]
    rows = [
        ("dense", "-", "1.000×", "1.000×", _pm(s["dense"]), "-", "-", "-"),
        ("dense + fine-tune", "-", "1.000×", "1.000×", "-", _pm(s["dense_ft"]), "-", "-"),
    ]
    for b in _budgets(result, spec):
        for m, rule in ((m, r) for m in spec.methods for r in ("greedy", "greedy_x8")):
            v = find(s, rule, m, b)
            if v is None:
                continue
            rows.append(
                (
                    m + (f", ranks ×{ROUND_TO}" if rule == "greedy_x8" else ""),
                    f"≤{b}×",
                    f"{v['macs_fraction']['mean']:.3f}×",
                    f"{v['params_fraction']['mean']:.3f}×",
                    _pm(v["acc_before"]),
                    _pm(v.get("acc_after")),
                    _pm(v["logits_err"], 1.0, 3),
                    _ranks(v["ranks_seed0"]),
                )
            )
    header = (
        "method",
        "budget",
        "MACs",
        "params",
        "acc before FT",
        "acc after FT",
        "logits err",
        "ranks (seed 0)",
    )
    return lines + md_table(header, rows, align="llrrrrrl")


def zhang_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## (2) Zhang et al.: asymmetric vs linear reconstruction, no fine-tuning",
        "",
        "Same ranks for both (the greedy ranks come from the PCA spectrum of the dense network's responses; the "
        "uniform ratio is the one of (3)). *Layer err* = each factorized layer's ‖ŷ − y‖ / ‖y‖ on the test set, "
        "ŷ its output in the approximated network, y the dense layer's output in the dense network (what the "
        "asymmetric fit minimizes on the calibration batches). Accuracy in %, errors as fractions; mean ± std.",
        "",
    ]
    rows = []
    for spec in MODELS:
        s = result["models"].get(spec.key, {}).get("summary")
        if not s:
            continue
        for rule in ("greedy", *UNIFORM_RULES):
            for b in _budgets(result, spec):
                lin, asym = find(s, rule, "zhang", b), find(s, rule, "zhang_asymmetric", b)
                if not (lin and asym):
                    continue
                errs = [
                    f"{n} {lin['layer_err'][n]['mean']:.3f} → {asym['layer_err'][n]['mean']:.3f}"
                    for n in lin["layer_err"]
                ]
                rows.append(
                    (
                        spec.label,
                        RULE_TEXT[rule] + (f", ρ={lin['ratio']:.3f}" if rule in UNIFORM_RULES else ""),
                        f"≤{b}×",
                        _pm(lin["acc_before"]),
                        _pm(asym["acc_before"]),
                        _pm(lin["logits_err"], 1.0, 3),
                        _pm(asym["logits_err"], 1.0, 3),
                        "; ".join(errs),
                    )
                )
    header = (
        "model",
        "ranks",
        "budget",
        "acc linear",
        "acc asymmetric",
        "logits err linear",
        "logits err asymmetric",
        "layer err linear → asymmetric",
    )
    return lines + md_table(header, rows, align="lllrrrrl")


def uniform_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## (3) Energy-based greedy ranks vs one uniform rank ratio at equal MAC budget",
        "",
        "*Greedy* = `mac_budget=b` (Zhang et al.'s greedy: maximize Π_l E_l(r_l) under the budget; E = kept energy "
        "of the squared singular values of the weights for `svd`, of the responses' PCA eigenvalues for "
        "`zhang*`). *Uniform* = `rank_ratio=ρ` with ρ the largest ratio whose model has ≤ b × the dense MACs "
        "(bisection): *all layers* factorizes every layer whose factors are cheaper than the layer; *edge layers "
        "dense* leaves the model's first conv and classifier dense (`exclude=`: "
        + "; ".join(f"{s.label}: {s.edge_text} `{', '.join(s.edge)}`" for s in MODELS)
        + "), the usual practice. Same calibration batches and fine-tune. Accuracy in %, mean ± std.",
        "",
    ]
    rows = []
    for spec in MODELS:
        s = result["models"].get(spec.key, {}).get("summary")
        if not s:
            continue
        for m in UNIFORM:
            for b in _budgets(result, spec):
                g = find(s, "greedy", m, b)
                others = [(r, find(s, r, m, b)) for r in UNIFORM_RULES]
                if not g:
                    continue
                points = [("greedy", g)]
                points += [(f"{RULE_TEXT[r]}, ρ={u['ratio']:.3f}", u) for r, u in others if u]
                for label, v in points:
                    rows.append(
                        (
                            spec.label,
                            m,
                            f"≤{b}×",
                            label,
                            f"{v['macs_fraction']['mean']:.3f}×",
                            _pm(v["acc_before"]),
                            _pm(v.get("acc_after")),
                            _ranks(v["ranks_seed0"]),
                        )
                    )
    header = ("model", "method", "budget", "ranks", "MACs", "acc before FT", "acc after FT", "ranks (seed 0)")
    return lines + md_table(header, rows, align="llllrrrl")


def latency_markdown(result: dict[str, Any]) -> list[str]:
    meta = result["meta"].get("latency", {})
    env = result["meta"]["environment"]
    lines = [
        "",
        "## (4) Latency of the factorized models against the dense one (1×28×28 input, 1 thread)",
        "",
        f"{meta.get('wall_s', 0):.0f} s; 1-min load average {meta.get('load_avg', 0):.2f} at its start. The seed-0 "
        "architectures of (1) at each budget (methods with the same ranks share one: `jaderberg_data` has "
        "`jaderberg`'s, `zhang_asymmetric` `zhang`'s), rebuilt from their records (weights' values do not "
        "change the time). Runtimes: eager PyTorch (`torch.inference_mode`); `torch.compile(dynamic=False, "
        f"options={{'freezing': True}})` per batch size ({meta.get('compile', '-')}); ONNX Runtime "
        f"{env.get('onnxruntime')} (`torch.onnx.export(dynamo=True)`, dynamic batch; CPU provider, "
        "`ORT_ENABLE_ALL`, 1 intra-op thread, no spinning). Every variant is checked against its eager model. "
        "The variants of a batch size run round-robin (order rotating), 3 warm-up calls each; a sample is the "
        "mean of `inner` back-to-back calls (≥ 50 ms); median (p25-p75) in ms over the rounds. *Speedup* per "
        "runtime = dense median / factorized median on that runtime (p25-p75 of the per-round paired ratios); "
        "*best vs best* = fastest dense runtime / fastest factorized runtime (shared/BENCHMARKS.md).",
    ]
    for lat in result.get("latency", []):
        kinds = list(lat["kinds"])
        lines += ["", f"### {lat['model']}", ""]
        for kind, info in lat["kinds"].items():
            same = f" (also {', '.join(info['same_as'])})" if info["same_as"] else ""
            if info.get("rule") == "greedy_x8":
                same += f" (`round_to={ROUND_TO}`)"
            if info.get("rounded_from"):
                same = f" (what-if: `{info['rounded_from']}`'s ranks rounded to ×{ROUND_TO}; accuracy not measured)"
            ranks = ", ".join(f"{n} {r}" for n, r in info["ranks"].items())
            lines.append(
                f"- `{kind}`{same}: {info['macs_fraction']:.3f}× MACs, {info['params_fraction']:.3f}× params; "
                f"ranks {ranks}"
            )
        rows = []
        for c in lat["cells"]:
            for rt in RUNTIMES:
                if f"dense {rt}" not in c["ms"]:
                    continue
                row = [
                    c["batch"],
                    rt + (" ★" if c["best"]["dense"] == f"dense {rt}" else ""),
                    _ms(c["ms"][f"dense {rt}"]),
                ]
                for kind in kinds:
                    s = c["per_runtime"][kind].get(rt)
                    row.append(f"{_ms(c['ms'][f'{kind} {rt}'])}; {_x(s)}" if s else "-")
                rows.append(row)
        header = ["batch", "runtime (★ fastest dense)", "dense ms", *(f"{k} ms; speedup" for k in kinds)]
        lines += ["", *md_table(header, rows, align="rlr" + "r" * len(kinds))]
        best_rows = [
            [c["batch"], c["best"]["dense"][6:]]
            + [
                f"{c['vs_best_dense'][k]['ratio_of_medians']:.2f}× ({c['best'][k][len(k) + 1 :]})"
                for k in kinds
            ]
            for c in lat["cells"]
        ]
        lines += [
            "",
            *md_table(["batch", "fastest dense", *(f"best vs best: {k}" for k in kinds)], best_rows),
        ]
        if lat["notes"]:
            lines += ["", *(f"- left out: {k}: {v}" for k, v in lat["notes"].items())]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    env = meta["environment"]
    lines = [
        "# Low-rank factorization: accuracy vs MACs, Zhang asymmetric vs linear, rank selection, latency",
        "",
        f"Reproduce: `{command_line(NAME, ['--quick'] if meta['quick'] else [])}` (resumable: finished (model, "
        f"seed) runs are kept in `{meta['stem']}_runs.jsonl`; `--fresh` reruns them). This file was written by "
        f"`{meta['command']}` in {meta['wall_s'] / 60:.1f} min; the training runs behind it took "
        f"{meta['train_s'] / 60:.1f} min, one after the other in one process (dense training, factorization, "
        "fine-tuning, tests), and the latency part "
        f"{meta.get('latency', {}).get('wall_s', 0) / 60:.1f} min. Torch {env['torch']}, lightning {env['lightning']}, Python "
        f"{env['python']} on {env['machine']}, {env['cpus']} CPUs shared with other jobs; one process, one torch "
        f"thread, under `nice`. Machine load (`uptime`) at the start: `{meta['uptime_start']}`; at the end: "
        f"`{meta['uptime_end']}`. Module docstring of `benchmarks/low_rank.py` for the method.",
        "",
        "## Summary",
        "",
        *summary_lines(result),
        "",
        "## Definitions",
        "",
        "- "
        + DEFINITIONS["macs"]
        + " From `effdl_lightning.measure.profile` at batch 1 (conv and linear); the "
        "factors of a layer are two ordinary conv/linear layers and are counted as such. *MACs* in the tables is "
        "the fraction of the dense model's.",
        "- **Params** = all parameters (BN included), as a fraction of the dense model's.",
        "- **Budget** `≤b×` = the `mac_budget` (or, for a uniform ratio, the bound on MACs it was bisected to): "
        "the factorized model has at most b × the dense conv + linear MACs.",
        "- **Accuracy** = top-1 on the 1,000 test images of the MNIST subset; *before FT* = right after the "
        "factorization, *after FT* = after the fine-tune below.",
        "- " + DEFINITIONS["timing"],
        "- " + DEFINITIONS["seeds"],
        "",
        "## Setup",
        "",
        f"- Data: the offline MNIST subset (5,000 images, stratified 3,500 / 500 / 1,000 split by seed, no "
        f"augmentation). Seeds {meta['seeds']} set the initial weights, the split, the data order and the "
        "calibration batches.",
        f"- Training: {meta['budget']}. Dense epochs: "
        + ", ".join(f"{s.label} {s.dense_epochs}" for s in MODELS)
        + ". The fine-tune budget is identical for every method, budget and rank rule, and the dense model "
        "fine-tuned with it is the control.",
        f"- Factorization: `low_rank_(model, batches, LowRankConfig.from_method(method, mac_budget=b))` on "
        f"{meta['calibration_batches']} training batches of 64; `jaderberg_data`: {meta['data_steps']} L-BFGS "
        "steps. Layers are factorized in forward order, so `jaderberg_data` and `zhang_asymmetric` see the "
        "inputs of the network approximated so far. The greedy may leave a layer dense (listed ranks only).",
    ]
    for spec in MODELS:
        if spec.key in result["models"]:
            lines += accuracy_markdown(result, spec)
    lines += zhang_markdown(result)
    lines += uniform_markdown(result)
    if result.get("latency"):
        lines += latency_markdown(result)
    lines += ["", "## What this shows, and what it does not", "", *discussion(result)]
    return "\n".join(lines) + "\n"


def discussion(result: dict[str, Any]) -> list[str]:
    """The "what this shows / what it does not" paragraphs, from the measured numbers."""
    v = result["verdicts"]
    shows = []
    for spec in MODELS:
        s = result["models"].get(spec.key, {}).get("summary")
        if not s:
            continue
        budgets = _budgets(result, spec)
        low = min(budgets)
        ranked = sorted(
            (p for p in (find(s, "greedy", m, low) for m in spec.methods) if p),
            key=lambda p: -p["acc_before"]["mean"],
        )
        after = [
            p["acc_after"]["mean"]
            for b in budgets
            for p in (find(s, "greedy", m, b) for m in spec.methods)
            if p and "acc_after" in p
        ]
        shows.append(
            f"{spec.label}, at ≤{low}× MACs right after the swap: "
            + ", ".join(f"{p['method']} {100 * p['acc_before']['mean']:.1f} %" for p in ranked)
            + f" (dense {100 * s['dense']['mean']:.1f} %); after the identical fine-tune every greedy variant lies "
            f"between {100 * min(after):.1f} and {100 * max(after):.1f} %."
        )
    text = [
        "What this shows: on two small MNIST models, 3 seeds, the data-driven fits (Zhang's PCA of the responses, "
        "Jaderberg's data reconstruction) lose far less accuracy at the swap than the weight-only ones (truncated "
        "SVD, Jaderberg's filter reconstruction), and a short fine-tune closes most of the gap: "
        + " ".join(shows),
    ]
    asym = v["asym_ge_linear"]
    if asym:
        text.append(
            f"Zhang's asymmetric fit is at least as accurate as the linear one in {sum(e['holds'] for e in asym)} of "
            f"{len(asym)} settings. On VGG-small it lowers the logits' error in every setting (the second "
            "factorized conv's error most); on the MLP the two fits coincide for the first layer (its inputs are "
            "exact) and differ little for the later ones, whose own truncation error dominates the error they "
            "inherit, so the accuracies differ by at most a test image or two (the ✗ rows)."
        )
    rows = v["greedy_ge_uniform"]
    for rule in UNIFORM_RULES:
        mine = [e for e in rows if e["rule"] == rule]
        if mine:
            text.append(
                f"Zhang's energy-greedy ranks ≥ {RULE_TEXT[rule]} at the same MAC budget in "
                f"{sum(e['holds'] for e in mine)} of {len(mine)} settings."
            )
    text.append(
        "The uniform ratio over all layers is a weak control: it also cuts the 1-channel first conv and the "
        "10-way classifier. Leaving those two dense (the usual practice) makes the uniform ratio the better rule "
        "on VGG-small wherever the table marks ✗: the greedy maximizes the product of kept energies, which "
        "drives single layers to very low ranks (e.g. `svd` features.8 7/128 at ≤0.5×, LeNet-300-100 `svd` fc1 "
        "5/300 at ≤0.125×) that accuracy does not forgive."
    )
    lat = v["latency"]
    if lat:
        text.append(
            "Latency: at ≤0.5× MACs the goal of ≥ "
            f"{GOAL}× against the fastest dense runtime at batch 64 is met by "
            + (", ".join(f"{e['model']} {e['kind']}" for e in lat if e["holds"]) or "none")
            + " and missed by "
            + (
                ", ".join(f"{e['model']} {e['kind']} ({e['speedup']:.2f}×)" for e in lat if not e["holds"])
                or "none"
            )
            + ". The free greedy ranks of VGG-small (e.g. 11 and 79) are not multiples of the CPU kernels' "
            "channel block."
        )
    x8 = v["latency_x8"]
    if x8:
        text.append(
            f"With `round_to={ROUND_TO}` the greedy picks its ranks on multiples of {ROUND_TO} under the same budget: "
            + ", ".join(f"{e['model']} {e['kind']} {e['speedup']:.2f}×" for e in x8)
            + f" at batch 64 (goal ≥ {GOAL}×: "
            + (
                "met by " + ", ".join(e["kind"] for e in x8 if e["holds"])
                if any(e["holds"] for e in x8)
                else "not met"
            )
            + "); their accuracy is in (1)."
        )
    return [
        " ".join(text),
        "",
        "What it does not show: behaviour on large models or datasets (MNIST is easy, and a 2-epoch fine-tune "
        "recovers most of the loss, compressing the differences between methods after fine-tuning; the before-FT "
        "columns separate them better); 3 seeds give a coarse std, and many after-FT differences are below it; "
        "the rank rules differ in which layers they touch, so (3) compares rules, not spectra alone; latencies are "
        "for a 28×28 input at 1 thread on a shared 2-core machine (load in the header), where the dense first "
        "conv, batch norms and pools are a fixed cost the factorization does not reduce.",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs MACs after (top) and before (bottom) fine-tuning per model; speedups (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 9))
    axes = fig.subplot_mosaic([["cnn_after", "mlp_after", "lat"], ["cnn_before", "mlp_before", "lat"]])
    for spec in MODELS:
        data = result["models"].get(spec.key)
        for stage in ("after", "before"):
            ax = axes[f"{spec.key}_{stage}"]
            if not data:
                ax.set_axis_off()
                continue
            s = data["summary"]
            key = f"acc_{stage}"
            ax.axhspan(
                100 * (s["dense"]["mean"] - s["dense"]["std"]),
                100 * (s["dense"]["mean"] + s["dense"]["std"]),
                color="gray",
                alpha=0.3,
                label="dense (mean ± std)",
            )
            curves = [("greedy", m, "o-", f"C{i}") for i, m in enumerate(spec.methods)]
            if spec.rounded:
                curves += [("greedy_x8", m, "^--", f"C{i}") for i, m in enumerate(spec.methods)]
            uniform = [(r, m) for r in UNIFORM_RULES for m in UNIFORM if m in spec.methods]
            # a method keeps its colour; the rank rule sets marker and line
            curves += [
                (r, m, "s:" if r == "uniform" else "D-.", f"C{spec.methods.index(m)}") for r, m in uniform
            ]
            for rule, m, fmt, color in curves:
                pts = [find(s, rule, m, b) for b in _budgets(result, spec)]
                pts = sorted((p for p in pts if p and key in p), key=lambda p: p["macs_fraction"]["mean"])
                if not pts:
                    continue
                ax.errorbar(
                    [p["macs_fraction"]["mean"] for p in pts],
                    [100 * p[key]["mean"] for p in pts],
                    yerr=[100 * p[key]["std"] for p in pts],
                    fmt=fmt,
                    color=color,
                    mfc="none" if rule not in ("greedy", "greedy_x8") else color,
                    capsize=3,
                    label=f"{m} ({RULE_TEXT[rule]})",
                )
            ax.set_xscale("log", base=2)
            ax.set(
                xlabel="MACs / dense MACs",
                ylabel="test accuracy (%), mean ± std over seeds",
                title=f"{spec.label}: {stage} fine-tuning",
            )
            if stage == "after":
                low = min(
                    [100 * v[key]["mean"] for v in s["variants"] if key in v] + [100 * s["dense"]["mean"]]
                )
                ax.set_ylim(max(0.0, low - 3), 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    ax = axes["lat"]
    labels, values = [], []
    for lat in result.get("latency", []):
        for c in lat["cells"]:
            for kind, sp in c["vs_best_dense"].items():
                labels.append(f"{lat['model']} {kind} b{c['batch']}")
                values.append(sp["ratio_of_medians"])
    if values:
        ax.barh(range(len(values)), values, color=["C0" if lb.endswith("b64") else "C1" for lb in labels])
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="gray", lw=0.8)
        ax.axvline(GOAL, color="red", lw=0.8, ls="--", label=f"goal {GOAL}× at ≤0.5× MACs, batch 64")
        ax.set(
            xlabel="fastest dense runtime / fastest factorized runtime",
            title="latency, 1 thread (blue batch 64, orange batch 1)",
        )
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)


# -- main -----------------------------------------------------------------------------------------------------


def uptime() -> str:
    load = os.getloadavg()
    return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (low_rank_quick.*)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds per variant")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out of the latency part"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="ignore the runs recorded in low_rank_runs.jsonl"
    )
    parser.add_argument(
        "--part",
        choices=("all", "latency", "report"),
        default="all",
        help="latency: re-time from the recorded runs (error if one is missing); report: rewrite the Markdown "
        "and PNG from the JSON",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet()
    start, load_start = time.perf_counter(), uptime()
    quick = args.quick
    stem = output_stem(NAME, quick)
    if args.part == "report":
        path = Path(args.out) / f"{stem}.json"
        if not path.exists():
            parser.error(f"--part report needs {path}")
        result = json.loads(path.read_text())
        result["verdicts"] = verdicts(result)
        paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
        print("wrote", ", ".join(str(p) for p in paths), flush=True)
        return
    threads = torch.get_num_threads()
    seeds = [0] if quick else args.seeds
    budget = Budget(finetune_epochs=1 if quick else args.finetune_epochs, limit_batches=3 if quick else None)
    calibration = 2 if quick else CALIBRATION_BATCHES
    data_steps = 3 if quick else 25
    specs = [dataclasses.replace(s, dense_epochs=1, budgets=s.budgets[:1]) if quick else s for s in MODELS]
    log = Path(args.out) / f"{stem}_runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh or quick:  # a quick run never resumes
        log.unlink(missing_ok=True)
    done: dict[tuple[str, int], dict[str, Any]] = {}  # the last recorded row of each (model, seed)
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["model"], r["seed"])] = r
    result: dict[str, Any] = {"meta": {}, "models": {}, "latency": []}
    ratios: dict[str, dict[tuple[str, float], float]] = {}  # per model, computed once when a seed has to run
    try:
        for spec in specs:
            rows = []
            jobs = {j[:3] for j in variant_jobs(spec)}
            for seed in seeds:
                row = done.get((spec.key, seed))
                missing = row is None or bool(
                    jobs - {(v["rule"], v["method"], v["budget"]) for v in row["variants"]}
                )
                if missing:
                    if args.part == "latency":
                        parser.error(f"--part latency needs the complete {spec.key} seed-{seed} run in {log}")
                    if spec.key not in ratios:
                        tick = time.perf_counter()
                        ratios[spec.key] = {
                            (rule, b): uniform_ratio(
                                spec.name, b, spec.edge if rule == "uniform_inner" else (), 6 if quick else 14
                            )["ratio"]
                            for rule in UNIFORM_RULES
                            for b in spec.budgets
                        }
                        print(
                            f"  {spec.label} uniform ratios in {time.perf_counter() - tick:.0f} s", flush=True
                        )
                    row = run_seed(
                        spec,
                        seed,
                        budget,
                        ratios[spec.key],
                        calibration,
                        data_steps,
                        seed == seeds[0],
                        2 if quick else None,
                        row,
                    )
                    with log.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"  {spec.label} seed {seed} done in {row['seconds']:.0f} s", flush=True)
                assert row is not None
                rows.append(row)
            result["models"][spec.key] = {
                "label": spec.label,
                "name": spec.name,
                "dense_epochs": spec.dense_epochs,
                "budgets": list(spec.budgets),
                "methods": list(spec.methods),
                "edge": list(spec.edge),
                "seeds": seeds,
                "uniform_ratios": [
                    {"rule": v["rule"], "budget": v["budget"], "ratio": v["ratio"]}
                    for v in rows[0]["variants"]
                    if v["rule"] in UNIFORM_RULES and v["method"] == "svd"
                ],
                "summary": summarize(spec, rows),
                "runs": rows,
            }
        lat_start, lat_load = time.perf_counter(), os.getloadavg()[0]
        use_compile = not (quick or args.no_compile)
        for spec in specs:
            row0 = result["models"][spec.key]["runs"][0]
            result["latency"].append(
                latency(spec, row0, (1, 64), 3 if quick else args.rounds, use_compile, not quick)
            )
        print(f"  latency in {time.perf_counter() - lat_start:.0f} s", flush=True)
        result["meta"]["latency"] = {
            "wall_s": time.perf_counter() - lat_start,
            "load_avg": lat_load,
            "compile": "1 thread" if use_compile else "skipped",
        }
    finally:
        torch.set_num_threads(threads)
    runs = [r for m in result["models"].values() for r in m["runs"]]
    result["meta"] |= {
        "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
        "stem": stem,
        "quick": quick,
        "environment": environment(threads=1)
        | {p: version(p) for p in ("onnxruntime", "onnx", "onnxscript")},
        "seeds": seeds,
        "budget": budget.describe().replace(f"dense: {budget.dense_epochs} epochs", "dense: per model"),
        "calibration_batches": calibration,
        "data_steps": data_steps,
        "uptime_start": load_start,
        "uptime_end": uptime(),
        "wall_s": time.perf_counter() - start,
        "train_s": sum(r["seconds"] for r in runs),
        "runtimes": [EAGER, COMPILE, ORT],
    }
    result["verdicts"] = verdicts(result)
    paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)


if __name__ == "__main__":
    main()
