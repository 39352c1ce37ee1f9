"""Filter pruning (Li et al., arXiv 1608.08710): wall-clock speedup at 2× fewer MACs, and Torch-Pruning side by side.

(a) *Latency at 2× fewer MACs.* VGG-small, ResNet-56 and MobileNetV2 at a CIFAR-size 3×32×32 input (the
    models' design size; latency does not depend on the weights' values, so untrained weights are timed) are
    cut in place by :func:`effdl_lightning.core.structured.prune_to_budget` to ≤ 0.5 × their MACs (one
    uniform ratio over every prunable channel group, L1 filter norm), and, as a second pruned variant, with
    every group's kept width rounded to a multiple of 8 (the channel block of the CPU conv kernels:
    ``prune_to_budget(..., round_to=8)``, as ``FilterPruning(round_to=8)`` does). Dense and pruned models are timed on eager PyTorch,
    ``torch.compile`` (inductor, static shapes, ``freezing=True``: BN folded, weights pre-packed; 1 thread by
    default, ``--compile-threads 1 2`` for both) and ONNX Runtime (``torch.onnx.export`` with a dynamic batch,
    ``ORT_ENABLE_ALL``), at batch 1 and 64, with 1 and 2 threads. All variants of a (model, threads, batch)
    cell run interleaved round-robin in this process after warm-up; speedups are ratios of medians of that one
    run: per runtime (dense / pruned on the same runtime) and fastest dense runtime / fastest pruned runtime.
(b) *Side by side with Torch-Pruning.* On the MNIST subset (1×28×28), VGG-small and ResNet-20 (option-B
    shortcuts: Torch-Pruning mis-cuts option-A zero-padding shortcuts, see the Markdown) are trained once per
    seed, then pruned to ≤ 0.5 × MACs by ours (``prune_to_budget``, L1), by Torch-Pruning's
    ``MagnitudePruner`` with ``MagnitudeImportance(p=1)`` (its ratio found by the same bisection on MACs) and by
    ours with random filters (the control), and each is fine-tuned with the same budget; 3 seeds. Also:
    Li et al.'s per-layer sensitivity of the seed-0 dense VGG-small (:mod:`effdl_lightning.core.sensitivity`).

Run: ``python -m benchmarks --only structured_pruning`` (about 20 minutes on 2 quiet cores: training and
``torch.compile`` dominate; twice that when the machine is shared); ``--quick`` (about a minute) writes ``structured_pruning_quick.*`` instead;
``--part latency|compare`` reruns one part and keeps the other from the existing JSON. Needs the ``bench``
extra (``pip install -e .[bench]``: onnx, onnxscript, onnxruntime, torch-pruning); a missing runtime or peer is
reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.metadata
import io
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
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
    quartiles,
    quiet,
    quiet_trainer,
    seed_all,
    write_results,
)
from benchmarks.pruning_curve import Budget, make_module
from benchmarks.sparse_inference import time_round_robin
from effdl_lightning.core.sensitivity import plot_sensitivity, sensitivity_analysis, sensitivity_table
from effdl_lightning.core.structured import prune_to_budget
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

NAME = "structured_pruning"
TARGET = 0.5  # MACs of the pruned model / the dense model's
CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)
LATENCY_MODELS = ("vgg_small", "resnet56", "mobilenet_v2")
# (label, registry name, constructor options, dense epochs); fine-tune epochs are shared (Budget)
COMPARE_MODELS: list[tuple[str, str, dict[str, Any], int]] = [
    ("VGG-small", "vgg_small", {}, 4),
    ("ResNet-20 (option B)", "resnet20", {"shortcut": "B"}, 3),
]
METHODS = ("ours (L1)", "Torch-Pruning (L1)", "ours (random)")
EAGER, COMPILE, ORT = "eager", "torch.compile", "ONNX Runtime"
RUNTIMES = (EAGER, COMPILE, ORT)
PRUNED, ROUNDED = "pruned", "pruned-x8"
# kept widths rounded to a multiple of 8: the channel block of the CPU conv kernels (oneDNN's and MLAS's
# NCHW8c layouts on AVX2); other widths are padded up to it, which eats the saving
ROUND_TO = 8
GOAL = 1.6  # speedup at batch 64 asked for, against the fastest dense runtime


def macs(model: nn.Module, shape: tuple[int, ...]) -> float:
    return float(profile(model, shape, latency=False).macs)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- pruning ------------------------------------------------------------------------------------------------


def prune_ours(model: nn.Module, shape: tuple[int, ...], criterion: str = "l1", seed: int = 0) -> float:
    """Cut ``model`` in place to ≤ TARGET × its MACs; returns the uniform ratio."""
    _, ratio = prune_to_budget(
        model, shape, partial(macs, shape=shape), TARGET, criterion, generator_seed=seed
    )
    return ratio


def prune_rounded(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Like :func:`prune_ours` with every kept width a multiple of :data:`ROUND_TO` (the core's ``round_to``)."""
    _, ratio = prune_to_budget(model, shape, partial(macs, shape=shape), TARGET, "l1", round_to=ROUND_TO)
    return ratio


def prune_torch_pruning(model: nn.Module, shape: tuple[int, ...], iterations: int = 14) -> float:
    """Torch-Pruning's ``MagnitudePruner`` (L1, per-group uniform ratio, the classifier's outputs ignored).

    Its ``pruning_ratio`` is found by bisection on cuts of copies (the smallest ratio whose MACs are
    ≤ TARGET × the model's), then ``model`` is cut in place. Returns the ratio.
    """
    import torch_pruning as tp

    base = macs(model, shape)

    def cut(target: nn.Module, ratio: float) -> nn.Module:
        outputs = [m for m in target.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
        pruner = tp.pruner.MagnitudePruner(
            target,
            torch.zeros(1, *shape),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=outputs,
        )
        pruner.step()
        return target

    lo, hi = 0.0, 0.95
    was_training = model.training
    model.eval()  # its tracing forward must not update batch-norm statistics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if macs(cut(copy.deepcopy(model), mid), shape) / base <= TARGET:
                hi = mid
            else:
                lo = mid
        cut(model, hi)
    model.train(was_training)
    return hi


def torch_pruning_option_a() -> dict[str, Any]:
    """What Torch-Pruning and ours do to ResNet-20 with option-A (zero-padding) shortcuts, untrained."""
    out: dict[str, Any] = {}
    model = create("resnet20", num_classes=10, input_shape=MNIST)
    ours = copy.deepcopy(model)
    ratio = prune_ours(ours, MNIST)
    out["ours"] = {"ratio": ratio, "macs_fraction": macs(ours, MNIST) / macs(model, MNIST), "ok": True}
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        out["torch_pruning"] = {"ok": False, "error": "torch-pruning not installed"}
        return out
    theirs = copy.deepcopy(model)
    try:
        prune_torch_pruning(theirs, MNIST, iterations=1)
        theirs(torch.zeros(2, *MNIST))
        out["torch_pruning"] = {"ok": True}
    except Exception as err:  # the peer's failure is a result
        out["torch_pruning"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    return out


# -- (a) latency --------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    """ONNX bytes of ``model`` with a dynamic batch dimension (``torch.onnx.export``, dynamo exporter)."""
    batch = torch.export.Dim("batch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(), (torch.randn(2, *shape),), dynamic_shapes=({0: batch},), dynamo=True, verbose=False
        )
    assert program is not None
    return program.model_proto.SerializeToString()


def ort_runner(blob: bytes, threads: int) -> Callable[[torch.Tensor], Any]:
    """An ONNX Runtime CPU session (``threads`` intra-op threads, no spinning) as a callable on tensors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ORT threads would otherwise spin and steal the interleaved torch variants' cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def build_variants(
    models: dict[str, nn.Module],
    onnx: dict[str, bytes],
    x: torch.Tensor,
    threads: int,
    use_compile: bool,
    notes: dict[str, str],
) -> tuple[dict[str, Callable[[torch.Tensor], Any]], dict[str, float]]:
    """``{"<kind> <runtime>": callable}`` at one batch size and thread count (compiled here).

    Checks every variant against its eager model; a runtime that fails is left out with a note.
    Returns the variants and the compile seconds per compiled variant.
    """
    variants: dict[str, Callable[[torch.Tensor], Any]] = {}
    compile_s: dict[str, float] = {}
    torch._dynamo.reset()
    for kind, model in models.items():
        variants[f"{kind} {EAGER}"] = model
        with torch.inference_mode():
            reference = model(x)
        candidates: list[tuple[str, Callable[[], Callable[[torch.Tensor], Any]]]] = []
        if use_compile:
            compiled = partial(torch.compile, model, dynamic=False, options={"freezing": True})
            candidates.append((COMPILE, compiled))
        if kind in onnx:
            candidates.append((ORT, partial(ort_runner, onnx[kind], threads)))
        for runtime, make in candidates:
            label = f"{kind} {runtime}"
            try:
                start = time.perf_counter()
                fn = make()
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = fn(x)  # compiles
                compile_s[label] = time.perf_counter() - start
                err = float((out - reference).abs().max())
                if err > 1e-3 * float(reference.abs().max()) + 1e-4:
                    raise RuntimeError(f"output differs from eager by {err:.2e}")
                variants[label] = fn
            except Exception as error:  # a runtime that does not work here is a result, not a crash
                notes[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                print(f"  {label} left out: {notes[label]}", flush=True)
    return variants, compile_s


def summarize_cell(samples: dict[str, list[float]], kinds: list[str]) -> dict[str, Any]:
    """Per-variant quartiles and, per pruned kind, per-runtime speedups and the best-vs-best speedup."""
    stats = {name: quartiles(times) for name, times in samples.items()}

    def paired(dense: str, pruned: str) -> dict[str, float]:
        ratios = [d / p for d, p in zip(samples[dense], samples[pruned], strict=True)]
        q = quartiles(ratios)
        median = stats[dense]["median"] / stats[pruned]["median"]
        return {"ratio_of_medians": median, "paired_p25": q["p25"], "paired_p75": q["p75"]}

    def best(kind: str) -> str:
        names = [n for n in samples if n.startswith(f"{kind} ")]
        return min(names, key=lambda n: stats[n]["median"])

    cell: dict[str, Any] = {"ms": stats, "best": {kind: best(kind) for kind in kinds}, "per_runtime": {}}
    cell["vs_best_dense"] = {}
    for kind in kinds[1:]:
        runtimes = [r for r in RUNTIMES if f"dense {r}" in samples and f"{kind} {r}" in samples]
        cell["per_runtime"][kind] = {r: paired(f"dense {r}", f"{kind} {r}") for r in runtimes}
        cell["vs_best_dense"][kind] = paired(cell["best"]["dense"], cell["best"][kind])
    return cell


def latency_model(
    name: str,
    threads_list: tuple[int, ...],
    compile_threads: tuple[int, ...],
    batches: tuple[int, ...],
    rounds: int,
) -> dict[str, Any]:
    """Prune one model to ≤ TARGET × MACs (plain and ×8-rounded widths) and time it against the dense one."""
    torch.manual_seed(0)
    models = {"dense": create(name, num_classes=10, input_shape=CIFAR).eval()}
    out: dict[str, Any] = {"model": name, "input": list(CIFAR), "ratio": {}, "macs": {}, "params": {}}
    out |= {"widths": {}, "notes": {}, "cells": []}
    for kind, prune in ((PRUNED, prune_ours), (ROUNDED, prune_rounded)):
        models[kind] = copy.deepcopy(models["dense"])
        out["ratio"][kind] = prune(models[kind], CIFAR)
        models[kind].eval()
    for kind, model in models.items():
        prof = profile(model, CIFAR, latency=False)
        out["macs"][kind], out["params"][kind] = prof.macs, prof.params
        out["widths"][kind] = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    onnx: dict[str, bytes] = {}
    if version("onnxruntime") is None:
        out["notes"][ORT] = "onnxruntime not installed (pip install -e .[bench])"
    else:
        for kind, model in models.items():
            try:
                onnx[kind] = export_onnx(model, CIFAR)
            except Exception as error:
                out["notes"][f"{kind} {ORT}"] = f"export failed: {type(error).__name__}: {error}"[:300]
    for threads in threads_list:
        with num_threads(threads):
            for batch in batches:
                x = torch.randn(batch, *CIFAR)
                use_compile = threads in compile_threads
                variants, compile_s = build_variants(models, onnx, x, threads, use_compile, out["notes"])
                with torch.inference_mode():
                    models["dense"](x)
                    start = time.perf_counter()
                    models["dense"](x)
                    once = time.perf_counter() - start
                inner = max(1, min(50, round(0.05 / max(once, 1e-6))))  # ≥ 50 ms per sample
                samples = time_round_robin(variants, x, warmup=2, rounds=rounds, inner=inner)
                cell: dict[str, Any] = {"threads": threads, "batch": batch, "inner_calls": inner}
                cell["rounds"] = rounds
                cell |= {"compile_s": compile_s} | summarize_cell(samples, list(models))
                out["cells"].append(cell)
                best = {k: f"{v['ratio_of_medians']:.2f}×" for k, v in cell["vs_best_dense"].items()}
                times = ", ".join(f"{k} {v['median']:.2f}" for k, v in cell["ms"].items())
                print(f"  {name} {threads}T b{batch}: {times} ms; best vs best {best}", flush=True)
    torch._dynamo.reset()
    return out


# -- (b) Torch-Pruning side by side -------------------------------------------------------------------------


def fit(module: ClassificationModule, dm: MNISTSubsetDataModule, epochs: int, budget: Budget) -> None:
    """Train quietly: no validation, logger, checkpoints or progress bar.

    The module is put in train mode first: Lightning 2.6 keeps a submodule's eval mode during ``fit`` (it only
    warns), and a pruned copy of an evaluated model is in eval mode (frozen batch-norm statistics).
    """
    module.train()
    trainer = quiet_trainer(max_epochs=epochs, limit_train_batches=budget.limit_batches, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)


def test_accuracy(model: nn.Module, loader: Any) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def compare_seed(
    label: str,
    name: str,
    options: dict[str, Any],
    dense_epochs: int,
    seed: int,
    budget: Budget,
    methods: tuple[str, ...],
    sensitivity_ratios: tuple[float, ...] | None,
    keep_models: bool,
) -> dict[str, Any]:
    """Train one dense model, prune it by every method to ≤ TARGET × MACs, fine-tune each identically."""
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    dm = MNISTSubsetDataModule(batch_size=budget.batch_size, seed=seed, augment=False)
    dm.setup()
    evaluate = partial(test_accuracy, loader=dm.test_dataloader())
    seed_all(seed)
    dense = create(name, num_classes=10, input_shape=MNIST, **options)
    dense_budget = dataclasses.replace(budget, dense_epochs=dense_epochs)
    fit(make_module(dense, dense_budget, False), dm, dense_epochs, dense_budget)
    base = {"macs": macs(dense, MNIST), "params": sum(p.numel() for p in dense.parameters())}
    out: dict[str, Any] = {"label": label, "seed": seed, "dense": {"test_acc": evaluate(dense), **base}}
    out["dense"]["seconds"] = time.perf_counter() - start
    out["methods"], models = {}, {"dense": dense}
    for method in methods:
        start = time.perf_counter()
        model = copy.deepcopy(dense)
        if method == "Torch-Pruning (L1)":
            ratio = prune_torch_pruning(model, MNIST)
        else:
            ratio = prune_ours(model, MNIST, "random" if "random" in method else "l1", seed)
        before = evaluate(model)
        seed_all(seed)  # the same data order for every fine-tune of this seed
        fit(make_module(model, budget, True), dm, budget.finetune_epochs, budget)
        row = {"ratio": ratio, "acc_before_ft": before, "acc_after_ft": evaluate(model)}
        row |= {"macs": macs(model, MNIST), "params": sum(p.numel() for p in model.parameters())}
        row["seconds"] = time.perf_counter() - start
        out["methods"][method] = row
        models[method] = model
        print(
            f"  {label} seed {seed} {method}: ratio {ratio:.3f}, MACs {row['macs'] / base['macs']:.3f}×, "
            f"acc {before:.4f} -> {row['acc_after_ft']:.4f} ({row['seconds']:.0f} s)",
            flush=True,
        )
    if sensitivity_ratios:
        out["sensitivity"] = sensitivity_analysis(dense, MNIST, evaluate, ratios=sensitivity_ratios)
    if keep_models:
        out["models"] = {k: m.eval() for k, m in models.items()}
    return out


def compare(
    models: list[tuple[str, str, dict[str, Any], int]],
    seeds: list[int],
    budget: Budget,
    methods: tuple[str, ...],
    workers: int,
    sensitivity_ratios: tuple[float, ...],
    rounds: int,
) -> dict[str, Any]:
    """Every (model, seed) in ``workers`` single-threaded processes; then eager batch-64 latency, 1 thread."""
    jobs = [
        (
            label,
            name,
            options,
            epochs,
            seed,
            budget,
            methods,
            sensitivity_ratios if i == 0 and seed == seeds[0] else None,
            seed == seeds[0],
        )
        for i, (label, name, options, epochs) in enumerate(models)
        for seed in seeds
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(compare_seed, *zip(*jobs, strict=True)))
    else:
        runs = [compare_seed(*job) for job in jobs]
    rows, sensitivity = [], None
    for label, name, options, epochs in models:
        mine = [r for r in runs if r["label"] == label]
        sensitivity = sensitivity or next((r["sensitivity"] for r in mine if "sensitivity" in r), None)
        x = torch.randn(64, *MNIST)
        with num_threads(1):
            samples = time_round_robin(mine[0].pop("models"), x, warmup=2, rounds=rounds, inner=1)
        latency = {k: quartiles(v) for k, v in samples.items()}
        dense_acc = mean_std(r["dense"]["test_acc"] for r in mine)
        row: dict[str, Any] = {"model": label, "name": name, "options": options, "dense_epochs": epochs}
        row |= {"dense": {**mine[0]["dense"], "acc_mean": dense_acc[0], "acc_std": dense_acc[1]}}
        row["dense"]["test_acc"] = [r["dense"]["test_acc"] for r in mine]
        row["dense"]["latency_ms"] = latency["dense"]
        row["methods"] = {}
        for method in methods:
            per_seed = [r["methods"][method] for r in mine]
            entry: dict[str, Any] = {"per_seed": per_seed, "latency_ms": latency[method]}
            for key in ("acc_before_ft", "acc_after_ft"):
                entry[key] = mean_std(p[key] for p in per_seed)
            entry["macs_fraction"] = per_seed[0]["macs"] / row["dense"]["macs"]
            entry["params_fraction"] = per_seed[0]["params"] / row["dense"]["params"]
            entry["speedup_eager_b64"] = latency["dense"]["median"] / latency[method]["median"]
            row["methods"][method] = entry
        rows.append(row)
    return {"rows": rows, "sensitivity": sensitivity or []}


# -- output -------------------------------------------------------------------------------------------------


def _ms(q: dict[str, float]) -> str:
    return f"{q['median']:.2f} ({q['p25']:.2f}-{q['p75']:.2f})"


def _x(speedup: dict[str, float]) -> str:
    return f"{speedup['ratio_of_medians']:.2f}× ({speedup['paired_p25']:.2f}-{speedup['paired_p75']:.2f})"


def _pm(value: list[float] | tuple[float, float]) -> str:
    return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}"


KIND_TEXT = {PRUNED: "pruned (uniform ratio)", ROUNDED: f"pruned, widths ×{ROUND_TO}"}


def _best(cell: dict[str, Any], kind: str) -> str:
    speedup = cell["vs_best_dense"][kind]["ratio_of_medians"]
    return f"{speedup:.2f}× ({cell['best'][kind][len(kind) + 1 :]})"


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for model in result["latency"]:
        m = model["macs"]
        parts = []
        for c in (c for c in model["cells"] if c["batch"] == 64):
            verdicts = [
                f"{KIND_TEXT[k]} ({m[k] / m['dense']:.3f}× MACs) **{_best(c, k)}**"
                + (" ✓" if c["vs_best_dense"][k]["ratio_of_medians"] >= GOAL else "")
                for k in (PRUNED, ROUNDED)
            ]
            parts.append(
                f"{c['threads']} thread(s), fastest dense {c['best']['dense'][6:]}: " + ", ".join(verdicts)
            )
        lines.append(f"- (a) {model['model']}, batch 64: " + "; ".join(parts) + ".")
    if result["latency"]:
        lines.append(f"- (a) ✓ = the goal of ≥ {GOAL}× against the fastest dense runtime at batch 64 is met.")
    for row in result["compare"].get("rows", []):
        dense = row["dense"]
        accs = ", ".join(
            f"{m} {_pm(e['acc_after_ft'])} % at {e['macs_fraction']:.3f}× MACs"
            for m, e in row["methods"].items()
        )
        lines.append(
            f"- (b) {row['model']}: dense {_pm((dense['acc_mean'], dense['acc_std']))} %; after fine-tune {accs}."
        )
    option_a = result["compare"].get("option_a")
    if option_a and not option_a["torch_pruning"]["ok"]:
        lines.append(
            "- (b) ResNet-20 with option-A (zero-padding) shortcuts: Torch-Pruning's cut model does not run ("
            f"`{option_a['torch_pruning']['error'][:120]}`); ours cuts it to "
            f"{option_a['ours']['macs_fraction']:.3f}× MACs and runs (the padded channels are kept)."
        )
    return lines


def latency_markdown(result: dict[str, Any]) -> list[str]:
    meta = result["meta"].get("latency", {})
    env = result["meta"]["environment"]
    lines = [
        "",
        "## (a) Latency at 2× fewer MACs (untrained weights, 3×32×32 input)",
        "",
        f"Command `{meta.get('command')}`: {meta.get('wall_s', 0):.0f} s, 1-min load average at start "
        f"{meta.get('load_avg', 0):.1f} (2 cores shared with other jobs: with more runnable threads than cores, "
        "2-thread torch timings, whose OpenMP barriers wait for a descheduled thread, can be tens of times the "
        "1-thread ones; ONNX Runtime runs with spinning off). Pruned models: "
        f"*{KIND_TEXT[PRUNED]}* = `prune_to_budget(model, (3, 32, 32), MACs, target={TARGET}, criterion='l1')`, "
        f"one ratio for every prunable channel group; *{KIND_TEXT[ROUNDED]}* = the same L1 filters, each group's "
        f"kept width rounded to a multiple of {ROUND_TO} (`prune_to_budget(..., round_to=8)`), ratio "
        f"again the smallest reaching ≤ {TARGET}× MACs. Runtimes: eager PyTorch (`torch.inference_mode`); "
        "`torch.compile(dynamic=False, options={'freezing': True})` (BN folded, weights pre-packed; compiled per "
        "batch size and thread count, inductor's C++ kernels are specialized on both; threads: "
        f"{meta.get('compile')}); ONNX Runtime {env.get('onnxruntime')} (`torch.onnx.export(dynamo=True)`, dynamic "
        f"batch, onnx {env.get('onnx')}, onnxscript {env.get('onnxscript')}; CPU provider, `ORT_ENABLE_ALL`, "
        "sequential, intra-op threads = threads). Every variant is checked against its eager model. The variants "
        "of a (threads, batch) cell run round-robin (order rotating), 2 warm-up calls each; a sample is the mean of "
        "`inner` back-to-back calls (≥ 50 ms).",
        "",
        "Speedup *per runtime* = dense median / pruned median on the same runtime (p25-p75 of the per-round "
        "paired ratios in brackets). *Best vs best* = the fastest dense runtime's median / the fastest pruned "
        "runtime's median: the speedup a user gets (shared/BENCHMARKS.md).",
    ]
    for model in result["latency"]:
        m, p, r, w = model["macs"], model["params"], model["ratio"], model["widths"]
        lines += ["", f"### {model['model']}", ""]
        lines += [
            f"- dense: MACs {m['dense'] / 1e6:.1f}M, params {p['dense'] / 1e3:.0f}k, conv widths "
            f"{sorted(set(w['dense']))}"
        ]
        lines += [
            f"- {KIND_TEXT[k]}: ratio {r[k]:.3f}, MACs {m[k] / 1e6:.1f}M ({m[k] / m['dense']:.3f}×), params "
            f"{p[k] / 1e3:.0f}k ({p[k] / p['dense']:.3f}×), conv widths {sorted(set(w[k]))}"
            for k in (PRUNED, ROUNDED)
        ]
        rows = []
        for c in model["cells"]:
            for rt in RUNTIMES:
                if f"dense {rt}" not in c["ms"]:
                    continue
                row = [c["threads"], c["batch"], rt + (" ★" if c["best"]["dense"] == f"dense {rt}" else "")]
                row.append(_ms(c["ms"][f"dense {rt}"]))
                for kind in (PRUNED, ROUNDED):
                    speedup = c["per_runtime"][kind].get(rt)
                    row += [_ms(c["ms"][f"{kind} {rt}"]), _x(speedup)] if speedup else ["-", "-"]
                rows.append(row)
        header = ["threads", "batch", "runtime (★ fastest dense)", "dense ms (p25-p75)"]
        for kind in (PRUNED, ROUNDED):
            header += [f"{KIND_TEXT[kind]} ms", "speedup"]
        lines += ["", *md_table(header, rows, align="rrlrrrrr")]
        best_rows = [
            (c["threads"], c["batch"], c["best"]["dense"][6:], _best(c, PRUNED), _best(c, ROUNDED))
            for c in model["cells"]
        ]
        header = [
            "threads",
            "batch",
            "fastest dense",
            f"best vs best: {KIND_TEXT[PRUNED]}",
            KIND_TEXT[ROUNDED],
        ]
        lines += ["", *md_table(header, best_rows, align="rrlrr")]
        if model["notes"]:
            lines += ["", *(f"- left out: {k}: {v}" for k, v in model["notes"].items())]
    return lines


def compare_markdown(result: dict[str, Any]) -> list[str]:
    comp = result["compare"]
    meta, env = comp["meta"], result["meta"]["environment"]
    lines = [
        "",
        "## (b) Side by side with Torch-Pruning (MNIST subset, 1×28×28)",
        "",
        f"Command `{meta['command']}`: {meta['wall_s']:.0f} s, load {meta['load_avg']:.1f}. Torch-Pruning "
        f"{env.get('torch-pruning')} (`MagnitudePruner`, `MagnitudeImportance(p=1)` with its defaults: group "
        "reduction `mean`, normalizer `mean`; per-group uniform `pruning_ratio`, the classifier's outputs "
        "ignored). Ours: `prune_to_budget(..., criterion='l1')` (L1 norm of the producing filters, Li et al.) "
        "and `criterion='random'` (control). Each method's ratio is the smallest giving ≤ "
        f"{TARGET} × the dense MACs (bisection on actual cuts). Data: 5,000-image MNIST subset, stratified 3,500 / "
        f"500 / 1,000 split by seed, no augmentation; seeds {meta['seeds']}; accuracy on the 1,000 test images. "
        f"Budget (identical for every method): {meta['budget']}; dense epochs per model in the table. One torch "
        f"thread per run, {meta['workers']} runs in parallel. Latency: eager PyTorch, batch 64, 1 thread, the "
        "dense and the pruned models of seed 0 interleaved (median, p25-p75 ms); ours (L1) and ours (random) have "
        "the same widths, so the gap between their latencies is timing noise. The MACs differ between ours and "
        "Torch-Pruning because both round per layer: ours removes floor(ratio · prunable) channels of every "
        "group with one ratio, and the widths reachable that way jump across the target (VGG-small: 0.479× at "
        "widths 22/44/88, 0.504× at 23/45/89), while Torch-Pruning's rounding lands at 22/45/91 (0.498×).",
        "",
    ]
    rows = []
    for row in comp["rows"]:
        dense = row["dense"]
        rows.append(
            (
                f"{row['model']} ({row['dense_epochs']} ep)",
                "dense",
                "-",
                f"{dense['macs'] / 1e6:.2f}M",
                f"{dense['params'] / 1e3:.1f}k",
                "-",
                _pm((dense["acc_mean"], dense["acc_std"])),
                ", ".join(f"{100 * a:.1f}" for a in dense["test_acc"]),
                _ms(dense["latency_ms"]),
                "1.00×",
            )
        )
        for method, e in row["methods"].items():
            rows.append(
                (
                    "",
                    method,
                    f"{e['per_seed'][0]['ratio']:.3f}",
                    f"{e['macs_fraction']:.3f}×",
                    f"{e['params_fraction']:.3f}×",
                    _pm(e["acc_before_ft"]),
                    _pm(e["acc_after_ft"]),
                    ", ".join(f"{100 * p['acc_after_ft']:.1f}" for p in e["per_seed"]),
                    _ms(e["latency_ms"]),
                    f"{e['speedup_eager_b64']:.2f}×",
                )
            )
    header = (
        "model",
        "method",
        "ratio",
        "MACs",
        "params",
        "acc before FT (%)",
        "acc after FT (%)",
        "per seed after FT",
        "eager b64 ms",
        "speedup",
    )
    lines += md_table(header, rows, align="llrrrrrlrr")
    option_a = comp.get("option_a")
    if option_a:
        tp = option_a["torch_pruning"]
        lines += [
            "",
            "ResNet-20 with the paper's option-A shortcuts (zero-padding, the registry default), untrained: ours cuts "
            f"it to {option_a['ours']['macs_fraction']:.3f}× MACs (ratio {option_a['ours']['ratio']:.3f}; the "
            "zero-padded channels and the stage-2/3 streams coupled to them are kept); Torch-Pruning: "
            + ("runs." if tp["ok"] else f"the cut model fails: `{tp['error'][:200]}`.")
            + " Hence option-B shortcuts (1×1 conv + BN projections) above.",
        ]
    if comp.get("sensitivity"):
        lines += [
            "",
            "## Per-layer sensitivity (Li et al. §4.1), seed-0 dense VGG-small, no retraining",
            "",
            "`sensitivity_analysis(dense, (1, 28, 28), test_accuracy)`: each channel group alone loses the given "
            "fraction of its filters (smallest L1 first); test accuracy (fraction of 1,000 images). Ratio 0 is "
            "the unpruned model.",
            "",
            sensitivity_table(comp["sensitivity"], fmt="{:.3f}").rstrip(),
            "",
            "MACs of the whole model at each point (fraction of dense):",
            "",
            sensitivity_table(comp["sensitivity"], "macs_fraction", "{:.2f}").rstrip(),
        ]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    env = result["meta"]["environment"]
    lines = [
        "# Filter pruning at 2× fewer MACs: wall-clock speedups, and Torch-Pruning side by side",
        "",
        f"Torch {env['torch']}, lightning {env['lightning']}, Python {env['python']} on {env['machine']}, "
        f"{env['cpus']} CPUs. Module docstring of `benchmarks/structured_pruning.py` for the method.",
        "",
        "## Summary",
        "",
        *summary_lines(result),
        "",
        "## Definitions",
        "",
        "- " + DEFINITIONS["macs"] + " From `effdl_lightning.measure.profile` at batch 1 (conv and linear).",
        "- **Params** = all parameters (BN included).",
        "- " + DEFINITIONS["timing"],
        "- " + DEFINITIONS["seeds"],
    ]
    if result["latency"]:
        lines += latency_markdown(result)
    if result["compare"].get("rows"):
        lines += compare_markdown(result)
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """(a) speedups at batch 64 and 1, (b) accuracy per method, (c) the sensitivity curves."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 5))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    cells = [(model, c) for model in result["latency"] for c in model["cells"]]
    for i, (_, c) in enumerate(cells):
        for j, kind in enumerate((PRUNED, ROUNDED)):
            x = i + (j - 0.5) * 0.4
            label = KIND_TEXT[kind] + ": fastest vs fastest" if i == 0 else None
            ax.bar(x, c["vs_best_dense"][kind]["ratio_of_medians"], 0.4, color=f"C{j}", label=label)
            for rt, marker in zip(RUNTIMES, "o^s", strict=True):
                if rt in c["per_runtime"][kind]:
                    value = c["per_runtime"][kind][rt]["ratio_of_medians"]
                    ax.plot(x, value, marker, color="k", ms=4, mfc="none", label=rt if i == j == 0 else None)
    labels = [f"{model['model']}\nb{c['batch']} {c['threads']}T" for model, c in cells]
    ax.set_xticks(range(len(cells)), labels, fontsize=6, rotation=60)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(GOAL, color="red", lw=0.8, ls="--", label=f"goal {GOAL}× (batch 64)")
    ax.set(
        ylabel="dense / pruned latency (markers: same runtime)",
        title=f"(a) speedup at ≤{TARGET}× MACs, 3×32×32",
    )
    ax.legend(fontsize=6)
    ax = axes[1]
    rows = result["compare"].get("rows", [])
    for i, row in enumerate(rows):
        points = [("dense", row["dense"]["acc_mean"], row["dense"]["acc_std"])]
        points += [(m, *e["acc_after_ft"]) for m, e in row["methods"].items()]
        for j, (name, mean, std) in enumerate(points):
            label = name if i == 0 else None
            x = i + (j - (len(points) - 1) / 2) * 0.15
            ax.errorbar(
                x, 100 * mean, yerr=100 * std, fmt="os^D"[j % 4], color=f"C{j}", capsize=3, label=label
            )
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    ax.set(
        ylabel="test accuracy (%), mean ± std over seeds", title="(b) after the same fine-tune, ≤0.5× MACs"
    )
    ax.grid(alpha=0.3, axis="y")
    if rows:
        ax.legend(fontsize=7)
    sensitivity = result["compare"].get("sensitivity")
    if sensitivity:
        plot_sensitivity(sensitivity, ax=axes[2], title="(c) sensitivity, VGG-small seed 0 (no retraining)")
    else:
        axes[2].set_axis_off()
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a ~1-minute smoke run (structured_pruning_quick.*)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training runs")
    parser.add_argument(
        "--compile-threads",
        type=int,
        nargs="*",
        default=[1],
        help="thread counts at which torch.compile is timed (compiling costs 15-60 s per model, batch size "
        "and variant here); default 1; '1 2' for the full matrix; none to skip it",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--part", choices=("all", "latency", "compare", "report"), default="all")
    args = parser.parse_args(argv)
    quiet()
    quick = args.quick
    stem = output_stem(NAME, quick)
    json_path = args.out / f"{stem}.json"
    previous = json.loads(json_path.read_text()) if args.part != "all" and json_path.exists() else {}
    if args.part == "report" and not previous:
        parser.error(f"--part report needs {json_path}")
    result: dict[str, Any] = {"meta": {}, "latency": [], "compare": {}} | previous
    command = command_line(NAME, sys.argv[1:] if argv is None else argv)
    result["meta"]["environment"] = environment() | {
        p: version(p) for p in ("onnxruntime", "onnx", "onnxscript", "torch-pruning")
    }
    result["meta"]["target"] = TARGET

    def save() -> None:  # after each part, so that a failure later keeps what was measured
        paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
        print("wrote", ", ".join(str(p) for p in paths), flush=True)

    if args.part in ("all", "compare"):
        start, load = time.perf_counter(), os.getloadavg()[0]
        models = COMPARE_MODELS[:1] if quick else COMPARE_MODELS
        if quick:
            models = [(label, name, options, 1) for label, name, options, _ in models]
        seeds = [0] if quick else args.seeds
        budget = Budget(
            finetune_epochs=1 if quick else args.finetune_epochs, limit_batches=5 if quick else None
        )
        methods = METHODS if version("torch-pruning") else tuple(m for m in METHODS if "Torch" not in m)
        ratios = (0.25, 0.5, 0.75) if quick else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
        workers = 1 if quick else args.workers
        result["compare"] = compare(models, seeds, budget, methods, workers, ratios, 3 if quick else 15)
        result["compare"]["option_a"] = torch_pruning_option_a()
        result["compare"]["meta"] = {
            "seeds": seeds,
            "budget": budget.describe().replace(f"dense: {budget.dense_epochs} epochs", "dense: per model"),
            "workers": workers,
            "wall_s": time.perf_counter() - start,
            "load_avg": load,
            "command": command,
        }
        save()
    if args.part in ("all", "latency"):
        start, load = time.perf_counter(), os.getloadavg()[0]
        names = LATENCY_MODELS[:1] if quick else LATENCY_MODELS
        threads = (1,) if quick else (1, 2)
        compile_threads = () if quick else tuple(args.compile_threads)
        rounds = 3 if quick else 10
        result["latency"] = [latency_model(n, threads, compile_threads, (1, 64), rounds) for n in names]
        result["meta"]["latency"] = {
            "compile": ", ".join(map(str, compile_threads)) or "skipped",
            "wall_s": time.perf_counter() - start,
            "load_avg": load,
            "command": command,
        }
    save()


if __name__ == "__main__":
    main()
