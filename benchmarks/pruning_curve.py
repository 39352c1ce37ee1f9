"""Accuracy vs compression ratio for global / per-layer magnitude and random pruning (Blalock et al. 2020).

What is measured: test accuracy on the 1,000 test images of the MNIST subset after pruning a trained dense
model to each compression ratio in {1, 2, 4, 8, 16, 32, 64}× with four methods -- global magnitude,
per-layer magnitude, global random, per-layer random -- each fine-tuned with the same budget, for 3 seeds.

How, per seed (the seed sets the initial weights, the stratified 3,500 / 500 / 1,000 split and the shuffling):

1. *Dense baseline*: train the model from scratch for ``--dense-epochs`` (SGD + nesterov momentum, one-cycle
   LR); its test accuracy is the horizontal band of the plot.
2. For every ratio ``r > 1`` and method: start from the dense weights, fine-tune for ``--finetune-epochs``
   with :class:`effdl_lightning.callbacks.MagnitudePruning` (``target_sparsity = 1 - 1/r`` over the pruned
   tensors -- every linear/conv *weight*, no biases --, Zhu & Gupta's cubic schedule from the first step to 75 %
   of the fine-tune in 10 events, the last 25 % with frozen masks; ``scope`` and ``criterion`` from the
   method), and test. The fine-tune budget (epochs, optimizer, LR schedule, data order) is identical for
   every method and ratio.
3. ``r = 1``: the dense weights fine-tuned with the same budget and no pruning (the same for every method;
   it equals dense training with the total budget of a pruned model).

The nominal ratio is over the pruned weights; the table also gives the compression ratio of
shared/BENCHMARKS.md, all parameters / nonzero parameters (biases included), from
:func:`effdl_lightning.measure.profile`. Mean ± sample std over seeds.

Run: ``python -m benchmarks --only pruning_curve`` (or ``python benchmarks/pruning_curve.py``);
``--quick`` is a seconds-long smoke run that writes ``pruning_curve_quick.*`` instead.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    DEFINITIONS,
    RESULTS,
    command_line,
    environment,
    layer_weights,
    md_table,
    mean_std,
    output_stem,
    quiet_trainer,
    seed_all,
    write_results,
)
from effdl_lightning.callbacks import MagnitudePruning
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

NAME = "pruning_curve"
RATIOS = (1, 2, 4, 8, 16, 32, 64)
#: method label -> (scope, criterion) of MagnitudePruning
METHODS: dict[str, tuple[str, str]] = {
    "global magnitude": ("global", "magnitude"),
    "per-layer magnitude": ("layer", "magnitude"),
    "global random": ("global", "random"),
    "per-layer random": ("layer", "random"),
}
TRAIN_SIZE = 3500  # training images of the MNIST subset at the default split


@dataclass(frozen=True)
class Budget:
    """The training budgets: identical for every method and ratio."""

    dense_epochs: int = 10
    finetune_epochs: int = 5
    batch_size: int = 64
    dense_lr: float = 0.05  # peak of the one-cycle schedule
    finetune_lr: float = 0.01  # start of the cosine decay to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    limit_batches: int | None = None  # training batches per epoch (smoke runs only; test is always full)

    def steps(self, epochs: int) -> int:
        return epochs * (self.limit_batches or -(-TRAIN_SIZE // self.batch_size))

    def describe(self) -> str:
        return (
            f"batch {self.batch_size}; SGD(momentum={self.momentum}, nesterov, weight_decay={self.weight_decay}); "
            f"dense: {self.dense_epochs} epochs, OneCycleLR(max_lr={self.dense_lr}); fine-tune: "
            f"{self.finetune_epochs} epochs, CosineAnnealingLR from lr={self.finetune_lr} to 0 (per step)"
            + (f"; {self.limit_batches} batches per epoch" if self.limit_batches else "")
        )


def make_module(model: torch.nn.Module, budget: Budget, finetune: bool) -> ClassificationModule:
    """``ClassificationModule`` with the dense (one-cycle) or fine-tune (cosine) optimizer and schedule."""
    epochs = budget.finetune_epochs if finetune else budget.dense_epochs
    lr = budget.finetune_lr if finetune else budget.dense_lr
    steps = budget.steps(epochs)
    scheduler = (
        partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=steps)
        if finetune
        else partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=lr, total_steps=steps)
    )
    return ClassificationModule(
        model,
        num_classes=10,
        optimizer=partial(
            torch.optim.SGD,
            lr=lr,
            momentum=budget.momentum,
            nesterov=True,
            weight_decay=budget.weight_decay,
        ),
        scheduler=scheduler,
        scheduler_interval="step",
        input_shape=(1, 28, 28),
    )


def fit_and_test(
    module: ClassificationModule,
    dm: MNISTSubsetDataModule,
    epochs: int,
    budget: Budget,
    callbacks: Sequence[Callback] = (),
) -> float:
    """Fit quietly (no validation, logger, checkpoints, progress bar) and return the test accuracy."""
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=budget.limit_batches,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=dm)
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    return float(result["test/acc"])


def measure_point(model: torch.nn.Module) -> dict[str, Any]:
    """Counts of the pruned model: BENCHMARKS.md compression ratio and per-tensor weight sparsity."""
    prof = profile(model, (1, 28, 28), latency=False)
    weights = layer_weights(model)
    pruned = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    layers = {name: float((w == 0).float().mean()) for name, w in weights.items()}
    return {
        "params": prof.params,
        "params_nonzero": prof.params_nonzero,
        "compression_ratio": prof.compression_ratio,
        "weight_sparsity": zeros / pruned,
        "layer_sparsity": layers,
    }


def run_seed(
    model_name: str, seed: int, ratios: Sequence[int], methods: Sequence[str], budget: Budget
) -> dict[str, Any]:
    """Train the dense baseline of one seed, then prune and fine-tune it at every (ratio, method).

    One torch thread (the machine is shared). Returns ``{"dense": {...}, "points": [...]}``.
    """
    torch.set_num_threads(1)
    dm = MNISTSubsetDataModule(batch_size=budget.batch_size, seed=seed, augment=False)
    dm.setup()
    start = time.perf_counter()
    seed_all(seed)
    dense = create(model_name, num_classes=10, input_shape=(1, 28, 28))
    dense_acc = fit_and_test(make_module(dense, budget, False), dm, budget.dense_epochs, budget)
    dense_state = copy.deepcopy(dense.state_dict())
    out: dict[str, Any] = {
        "seed": seed,
        "dense": {"test_acc": dense_acc, **measure_point(dense), "seconds": time.perf_counter() - start},
        "points": [],
    }
    jobs: list[tuple[int, str | None]] = []
    for ratio in ratios:
        jobs += [(ratio, None)] if ratio == 1 else [(ratio, m) for m in methods]
    for ratio, method in jobs:
        start = time.perf_counter()
        seed_all(seed)  # the same data order for every fine-tune of this seed
        model = create(model_name, num_classes=10, input_shape=(1, 28, 28))
        model.load_state_dict(dense_state)
        callbacks: list[Callback] = []
        sparsity = 1.0 - 1.0 / ratio
        if method is not None:
            scope, criterion = METHODS[method]
            callbacks.append(
                MagnitudePruning(
                    target_sparsity=sparsity,
                    schedule="cubic",
                    scope=scope,
                    criterion=criterion,
                    seed=seed,
                    make_permanent=True,
                )
            )
        acc = fit_and_test(make_module(model, budget, True), dm, budget.finetune_epochs, budget, callbacks)
        point = {
            "ratio": ratio,
            "method": method or "none (fine-tuned dense)",
            "target_sparsity": sparsity,
            "test_acc": acc,
            **measure_point(model),
            "seconds": time.perf_counter() - start,
        }
        out["points"].append(point)
        print(
            f"{model_name} seed {seed} {ratio:>2}× {point['method']:<24} acc {acc:.4f} "
            f"CR(all) {point['compression_ratio']:.2f} ({point['seconds']:.1f} s)",
            flush=True,
        )
    return out


def aggregate(runs: list[dict[str, Any]], ratios: Sequence[int], methods: Sequence[str]) -> dict[str, Any]:
    """Mean ± std over seeds of the dense baseline and of every (method, ratio); ratio 1 is shared."""
    dense = [r["dense"]["test_acc"] for r in runs]
    d_mean, d_std = mean_std(dense)
    curves: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        rows = []
        for ratio in ratios:
            points = [
                p
                for r in runs
                for p in r["points"]
                if p["ratio"] == ratio and (ratio == 1 or p["method"] == method)
            ]
            accs = [p["test_acc"] for p in points]
            a_mean, a_std = mean_std(accs)
            rows.append(
                {
                    "ratio": ratio,
                    "target_sparsity": 1.0 - 1.0 / ratio,
                    "acc_mean": a_mean,
                    "acc_std": a_std,
                    "test_acc": accs,
                    "compression_ratio": mean_std(p["compression_ratio"] for p in points)[0],
                    "weight_sparsity": mean_std(p["weight_sparsity"] for p in points)[0],
                }
            )
        curves[method] = rows
    return {"dense": {"acc_mean": d_mean, "acc_std": d_std, "test_acc": dense}, "curves": curves}


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    env = meta["environment"]
    lines = [
        "# Accuracy vs compression ratio: global / per-layer magnitude and random pruning",
        "",
        f"Command: `{meta['command']}`; torch {env['torch']}, lightning {env['lightning']}, {env['machine']}, "
        f"{env['cpus']} CPUs, 1 torch thread per run, {meta['workers']} run(s) in parallel; total "
        f"{meta['wall_s']:.0f} s.",
        "",
        "## Definitions",
        "",
        "- **Ratio** (rows, x-axis) = nominal compression of the *pruned tensors* (every linear/conv weight; "
        "biases are not pruned): target sparsity = 1 − 1/ratio.",
        "- " + DEFINITIONS["compression"] + " Given as *CR (all)*, from `effdl_lightning.measure.profile` "
        "(mean over methods and seeds; the methods differ by at most "
        f"{meta['cr_spread']:.3f}).",
        "- **Accuracy** = top-1 on the 1,000 test images of the seed's split, in %.",
        "- " + DEFINITIONS["seeds"],
        "",
        "## Setup",
        "",
        f"- Models run: {', '.join(meta['models'])}; data: the 5,000-image MNIST subset, stratified "
        "3,500 / 500 / 1,000 split by seed (validation unused: no model selection), no augmentation; "
        f"seeds {meta['seeds']} (initial weights, split, data order).",
        f"- Budget (identical for every method and ratio): {meta['budget_text']}.",
        "- Pruning: `MagnitudePruning(target_sparsity=1−1/ratio, schedule='cubic', scope=<global|layer>, "
        "criterion=<magnitude|random>, seed=<seed>)` with its defaults: pruning from the first fine-tune step "
        "to 75 % of the fine-tune in 10 events, frozen masks for the last 25 %, masks made permanent at the end.",
        "- Dense baseline = the model trained from scratch with the dense budget (the band in the plot). "
        "1× = the dense weights fine-tuned with the same budget as every pruned point, without pruning (one "
        "run per seed, shared by the four methods).",
        "",
    ]
    for model in result["models"]:
        agg = model["summary"]
        dense = agg["dense"]
        methods = list(agg["curves"])
        lines += [
            f"## {model['model']}: {model['params']:,} parameters",
            "",
            f"Dense baseline: **{100 * dense['acc_mean']:.2f} ± {100 * dense['acc_std']:.2f} %** "
            f"(per seed: {', '.join(f'{100 * a:.1f}' for a in dense['test_acc'])}).",
            "",
        ]
        rows = []
        for i, ratio in enumerate(model["ratios"]):
            same = [p["compression_ratio"] for r in model["runs"] for p in r["points"] if p["ratio"] == ratio]
            cells = [
                f"{ratio}×",
                f"{100 * (1 - 1 / ratio):.2f} %",
                f"{sum(same) / len(same):.2f}×",
            ]
            for method in methods:
                row = agg["curves"][method][i]
                cells.append(f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}")
            rows.append(cells)
        lines += md_table(
            ["ratio", "weight sparsity", "CR (all)", *(f"{m} (%)" for m in methods)],
            rows,
        )
        lines += ["", f"Runtime: {model['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs nominal ratio (log2 x), one line per method with std error bars, dense band; full + zoom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.5 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models, strict=True):
        agg = model["summary"]
        dense = agg["dense"]
        d_mean, d_std = 100 * dense["acc_mean"], 100 * dense["acc_std"]
        lows = []
        for ax in row_axes:
            ax.axhspan(d_mean - d_std, d_mean + d_std, color="gray", alpha=0.25, label="dense ± std")
            ax.axhline(d_mean, color="gray", lw=1, ls="--")
            for j, (method, rows) in enumerate(agg["curves"].items()):
                xs = [r["ratio"] * (1 + 0.03 * (j - 1.5)) for r in rows]  # small dodge, log scale
                ys = [100 * r["acc_mean"] for r in rows]
                lows += ys
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[100 * r["acc_std"] for r in rows],
                    marker="os^v"[j % 4],
                    ls="-" if "magnitude" in method else ":",
                    capsize=3,
                    label=method,
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(model["ratios"], [f"{r}×" for r in model["ratios"]])
            ax.set_xlabel("compression ratio of the pruned weights (log2)")
            ax.set_ylabel("test accuracy (%), mean ± std over seeds")
            ax.grid(alpha=0.3)
        row_axes[0].set_title(f"{model['model']}, MNIST subset, {len(result['meta']['seeds'])} seed(s)")
        row_axes[0].legend(fontsize=8, loc="lower left")
        row_axes[1].set_ylim(d_mean - 4, d_mean + 1.5)
        row_axes[1].set_title("zoom: within 4 points of the dense baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (pruning_curve_quick.*)")
    parser.add_argument("--models", nargs="+", default=["lenet300"], help="registry names (lenet300, lenet5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=int, nargs="+", default=list(RATIOS))
    parser.add_argument("--dense-epochs", type=int, default=Budget.dense_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=Budget.finetune_epochs)
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    quick = args.quick
    if quick:
        models, seeds, ratios, workers = ["lenet300"], [0], [1, 8], 1
        budget = Budget(dense_epochs=1, finetune_epochs=1, limit_batches=3)
    else:
        models, seeds, ratios, workers = args.models, args.seeds, args.ratios, args.workers
        budget = Budget(dense_epochs=args.dense_epochs, finetune_epochs=args.finetune_epochs)
    if any(r < 1 for r in ratios):
        parser.error(f"--ratios must be >= 1, got {ratios}")
    methods = list(METHODS)
    model_results = []
    for name in models:
        model_start = time.perf_counter()
        jobs = [(name, seed, ratios, methods, budget) for seed in seeds]
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                runs = list(pool.map(run_seed, *zip(*jobs, strict=True)))
        else:
            runs = [run_seed(*job) for job in jobs]
        model_results.append(
            {
                "model": name,
                "params": runs[0]["dense"]["params"],
                "ratios": ratios,
                "runs": runs,
                "summary": aggregate(runs, ratios, methods),
                "wall_s": time.perf_counter() - model_start,
            }
        )
    spread = max(
        (
            max(p["compression_ratio"] for p in same) - min(p["compression_ratio"] for p in same)
            for m in model_results
            for ratio in ratios
            if (same := [p for r in m["runs"] for p in r["points"] if p["ratio"] == ratio])
        ),
        default=0.0,
    )
    result: dict[str, Any] = {
        "meta": {
            "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
            "environment": environment(1),
            "models": models,
            "seeds": seeds,
            "methods": {m: {"scope": s, "criterion": c} for m, (s, c) in METHODS.items()},
            "budget": asdict(budget),
            "budget_text": budget.describe(),
            "workers": workers,
            "cr_spread": spread,
            "wall_s": time.perf_counter() - start,
        },
        "models": model_results,
    }
    paths = write_results(
        args.out, output_stem(NAME, quick), result, to_markdown(result), partial(plot, result)
    )
    print(f"wrote {', '.join(str(p) for p in paths)} in {result['meta']['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
