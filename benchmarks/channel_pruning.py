"""He et al. 2017 (arXiv 1707.06168) channel pruning in small: LASSO + least squares vs L1 and random, no fine-tune.

What is measured: for a VGG-style CNN (``vgg_small``: 3×3 conv widths 32-M-64-M-128-M, global average pool,
linear head; input 1×28×28) trained on the MNIST subset, the channels of every prunable layer are reduced
2× and 4× **without fine-tuning** by

* **lasso + LS** -- He et al.: LASSO channel selection, then least-squares reconstruction of the consumer,
* **lasso (no LS)** -- the LASSO selection alone (the ablation of the paper's second step),
* **L1 + LS** / **L1** -- the producer's filter L1 norm (Li et al., arXiv 1608.08710) with / without LS,
* **random + LS** / **random** -- random channels with / without LS,

all through :func:`effdl_lightning.core.channel_selection.channel_pruning_`: layer by layer in forward
order, inputs sampled from the already pruned network, targets from the original. Reported, mean ± std over
3 seeds: the relative reconstruction error of each pruned layer's output (on the fitted samples and on the
held-out test images), test accuracy, and MACs.

How, per seed (the seed sets the initial weights, the stratified 3,500 / 500 / 1,000 split and the order):

1. Train ``vgg_small`` from scratch with :class:`effdl_lightning.modules.ClassificationModule` and a CPU
   Lightning ``Trainer`` (``--epochs``, SGD + nesterov, one-cycle LR, batch 64, no augmentation).
2. For every ratio and method: prune a copy of the trained model with ``--sample-images`` training images
   (10 random output positions per image for a conv consumer, as in the paper; every image once for the
   linear head), and test it.

Run: ``python -m benchmarks --only channel_pruning`` (or ``python benchmarks/channel_pruning.py``);
``--quick`` is a seconds-long smoke run that writes ``channel_pruning_quick.*`` instead.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
    quiet_trainer,
    seed_all,
    write_results,
)
from effdl_lightning.core.channel_selection import channel_pruning_, relative_output_errors
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

NAME = "channel_pruning"
MODEL = "vgg_small"
SHAPE = (1, 28, 28)
TRAIN_SIZE = 3500
#: channel reduction factor -> ratio of each prunable layer's input channels removed
RATIOS = {2: 0.5, 4: 0.75}
#: label -> (method, reconstruct)
METHODS: dict[str, tuple[str, bool]] = {
    "lasso + LS (He et al.)": ("lasso", True),
    "L1 + LS": ("l1", True),
    "random + LS": ("random", True),
    "lasso (no LS)": ("lasso", False),
    "L1 (Li et al.)": ("l1", False),
    "random": ("random", False),
}


@dataclass(frozen=True)
class Setup:
    """Training budget and pruning data (identical for every method and ratio)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sample_images: int = 1000  # training images that the pruning samples from
    samples_per_image: int = 10
    limit_batches: int | None = None  # training batches per epoch (smoke runs only)

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs, batch {self.batch_size}, SGD(momentum={self.momentum}, nesterov, "
            f"weight_decay={self.weight_decay}), OneCycleLR(max_lr={self.lr}) per step, no augmentation"
            + (f", {self.limit_batches} batches per epoch" if self.limit_batches else "")
        )


def train(seed: int, setup: Setup, dm: MNISTSubsetDataModule) -> nn.Module:
    """``vgg_small`` trained from scratch with ``ClassificationModule`` and a quiet CPU ``Trainer``."""
    seed_all(seed)
    model = create(MODEL, num_classes=10, input_shape=SHAPE)
    steps = setup.epochs * (setup.limit_batches or -(-TRAIN_SIZE // setup.batch_size))
    module = ClassificationModule(
        model,
        num_classes=10,
        optimizer=partial(
            torch.optim.SGD,
            lr=setup.lr,
            momentum=setup.momentum,
            nesterov=True,
            weight_decay=setup.weight_decay,
        ),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=setup.lr, total_steps=steps),
        scheduler_interval="step",
        input_shape=SHAPE,
    )
    trainer = quiet_trainer(
        max_epochs=setup.epochs, limit_train_batches=setup.limit_batches, limit_val_batches=0
    )
    trainer.fit(module, datamodule=dm)
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(
            sum(int((model(b).argmax(1) == t).sum()) for b, t in zip(x.split(250), y.split(250), strict=True))
            / len(y)
        )


def run_seed(seed: int, setup: Setup, ratios: dict[int, float]) -> dict[str, Any]:
    torch.set_num_threads(1)
    start = time.perf_counter()
    dm = MNISTSubsetDataModule(batch_size=setup.batch_size, seed=seed, augment=False)
    dm.setup()
    assert dm.train_dataset is not None and dm.test_dataset is not None
    dense = train(seed, setup, dm)
    x_test, y_test = dm.test_dataset.tensors
    x_train = dm.train_dataset.tensors[0]
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[: setup.sample_images]
    batches = list(x_train[order].split(100))
    test_batches = list(x_test.split(250))
    dense_prof = profile(dense, SHAPE, latency=False)
    out: dict[str, Any] = {
        "seed": seed,
        "dense": {
            "test_acc": accuracy(dense, x_test, y_test),
            "macs": dense_prof.macs,
            "params": dense_prof.params,
            "train_s": time.perf_counter() - start,
        },
        "points": [],
    }
    print(
        f"seed {seed}: dense acc {out['dense']['test_acc']:.4f} ({out['dense']['train_s']:.0f} s)", flush=True
    )
    for factor, ratio in ratios.items():
        for label, (method, reconstruct) in METHODS.items():
            t0 = time.perf_counter()
            pruned = copy.deepcopy(dense)
            result = channel_pruning_(
                pruned,
                batches,
                ratio,
                method,
                reconstruct,
                samples_per_image=setup.samples_per_image,
                generator=torch.Generator().manual_seed(seed),
            )
            seconds = time.perf_counter() - t0
            consumers = [r.consumer for r in result.layers]
            held = relative_output_errors(dense, pruned, test_batches, consumers, result.cuts)
            prof = profile(pruned, SHAPE, latency=False)
            point = {
                "factor": factor,
                "ratio": ratio,
                "method": label,
                "test_acc": accuracy(pruned, x_test, y_test),
                "fit_error": result.mean_error,
                "heldout_error": sum(held.values()) / len(held),
                "macs": prof.macs,
                "params": prof.params,
                "seconds": seconds,
                "layers": [
                    {**asdict(r), "heldout_error": held[r.consumer]} | {"kept": len(r.kept)}
                    for r in result.layers
                ],
                "skipped": result.skipped,
            }
            out["points"].append(point)
            print(
                f"seed {seed} {factor}x {label:<24} acc {point['test_acc']:.4f} err fit {point['fit_error']:.4f} "
                f"held-out {point['heldout_error']:.4f} ({seconds:.1f} s)",
                flush=True,
            )
    out["seconds"] = time.perf_counter() - start
    return out


def aggregate(runs: list[dict[str, Any]], ratios: dict[int, float]) -> dict[str, Any]:
    """Mean ± std over seeds per (factor, method), and per layer for the errors."""
    rows = []
    for factor in ratios:
        for label in METHODS:
            points = [p for r in runs for p in r["points"] if p["factor"] == factor and p["method"] == label]
            layers = []
            for i, layer in enumerate(points[0]["layers"]):
                layers.append(
                    {
                        "consumer": layer["consumer"],
                        "channels": f"{layer['channels_before']}→{layer['channels_after']}",
                        "fit_error": mean_std(p["layers"][i]["error_after"] for p in points),
                        "heldout_error": mean_std(p["layers"][i]["heldout_error"] for p in points),
                        "error_before": mean_std(p["layers"][i]["error_before"] for p in points),
                    }
                )
            rows.append(
                {
                    "factor": factor,
                    "ratio": ratios[factor],
                    "method": label,
                    "test_acc": mean_std(p["test_acc"] for p in points),
                    "fit_error": mean_std(p["fit_error"] for p in points),
                    "heldout_error": mean_std(p["heldout_error"] for p in points),
                    "macs": points[0]["macs"],
                    "params": points[0]["params"],
                    "seconds": mean_std(p["seconds"] for p in points),
                    "layers": layers,
                }
            )
    return {
        "dense": {
            "test_acc": mean_std(r["dense"]["test_acc"] for r in runs),
            "macs": runs[0]["dense"]["macs"],
            "params": runs[0]["dense"]["params"],
        },
        "rows": rows,
    }


def _pm(value: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * value[0]:.{digits}f} ± {scale * value[1]:.{digits}f}"


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    env = meta["environment"]
    summary = result["summary"]
    dense = summary["dense"]
    lines = [
        "# Channel pruning (He et al. 2017) in small: LASSO + least squares vs L1 and random, no fine-tuning",
        "",
        f"Command: `{meta['command']}`; torch {env['torch']}, lightning {env['lightning']}, {env['machine']}, "
        f"1 torch thread; total {meta['wall_s']:.0f} s.",
        "",
        "## Definitions",
        "",
        "- **Channel reduction 2× / 4×**: every prunable layer keeps `ceil((1 − r) · C)` of its `C` input "
        "channels, r = 0.5 / 0.75. A layer is prunable when the channels it reads come from exactly one producer "
        "and go to exactly one conv/linear consumer: in `vgg_small` the outputs of `features.0` (32), "
        "`features.4` (64) and `features.8` (128), read by `features.4`, `features.8` and `head`. The image "
        "input and the logits are never pruned. Removing a channel removes the producer's filter, its batch-norm "
        "entry and the consumer's input column.",
        "- **Relative reconstruction error** of a pruned layer = ‖Y − Ŷ‖² / ‖Y‖², Y the consumer's output in the "
        "original network, Ŷ in the pruned one (on the channels it keeps, when a later layer prunes its "
        "filters). *fit*: on the sampled positions the selection and least squares used (the error right after "
        "the layer's cut); *held-out*: the whole output map on the 1,000 test images of the final pruned "
        "model. The tables give the mean over the 3 pruned layers.",
        "- " + DEFINITIONS["macs"] + " At input 1×28×28; the same for every method at one reduction.",
        "- **Accuracy** = top-1 on the 1,000 test images of the seed's split, in %, **without fine-tuning**.",
        "- " + DEFINITIONS["seeds"],
        "",
        "## Setup",
        "",
        f"- Model `{MODEL}` (defaults: widths 32-M-64-M-128-M, BN, global average pool, linear head), "
        f"{dense['params']:,} parameters, {dense['macs']:,} MACs; data: the 5,000-image MNIST subset, "
        f"stratified 3,500 / 500 / 1,000 split by seed; seeds {meta['seeds']}.",
        f"- Training (ClassificationModule + Lightning Trainer, CPU): {meta['setup_text']}.",
        f"- Pruning data: {meta['setup']['sample_images']} random training images; a conv consumer gets "
        f"{meta['setup']['samples_per_image']} random output positions per image (He et al.), the linear "
        "head one row per image. X (inputs) from the network pruned so far, Y (targets) from the original; "
        "layers in forward order. LASSO: FISTA on the channel Gram matrix, bisection on λ until ≤ c′ "
        "nonzero β, keep the c′ largest |β|; least squares W′ = pinv(X′)Y (with the bias for the head). "
        "*no LS* keeps the selected channels' original weights.",
        "",
        f"Dense baseline: **{_pm(dense['test_acc'], 100)} %** test accuracy, {dense['macs']:,} MACs.",
        "",
    ]
    for factor in meta["factors"]:
        rows = [r for r in summary["rows"] if r["factor"] == factor]
        lines += [f"## {factor}× channel reduction (r = {rows[0]['ratio']})", ""]
        lines += md_table(
            ["method", "rel. error (fit)", "rel. error (held-out)", "test acc (%)", "MACs", "params"],
            [
                (
                    r["method"],
                    _pm(r["fit_error"], digits=4),
                    _pm(r["heldout_error"], digits=4),
                    _pm(r["test_acc"], 100),
                    f"{r['macs']:,} ({dense['macs'] / r['macs']:.2f}× fewer)",
                    f"{r['params']:,}",
                )
                for r in rows
            ],
        )
        lines += ["", "Per layer, held-out relative error (mean ± std over seeds):", ""]
        consumers = [layer["consumer"] for layer in rows[0]["layers"]]
        lines += md_table(
            ["method", *(f"{c} ({rows[0]['layers'][i]['channels']})" for i, c in enumerate(consumers))],
            [(r["method"], *(_pm(layer["heldout_error"], digits=4) for layer in r["layers"])) for r in rows],
        )
        lines.append("")
    lines += [
        "## Verdict",
        "",
        *meta["verdict"],
        "",
        "Notes: the LASSO ranks channels by how well their *original* weights, scaled by β, reconstruct Y "
        "(He et al.'s first step); the least-squares step then refits the kept weights, so a better ranking "
        "before the refit need not give a lower error after it. The channels this code's LASSO keeps are the "
        "nonzero coefficients of scikit-learn's `Lasso` at the λ where c′ remain "
        "(`tests/test_channel_selection.py`). The *fit* error of a layer includes the error carried in from "
        "the layers pruned before it (inputs from the pruned network, targets from the original).",
        "",
    ]
    return "\n".join(lines)


def verdict(summary: dict[str, Any], factors: list[int]) -> list[str]:
    """Per reduction: is lasso + LS best against the plain selections, against them + LS, and selection alone?"""
    ours = "lasso + LS (He et al.)"
    groups = {
        "against L1 (Li et al.) and random without LS": (ours, ["L1 (Li et al.)", "random"]),
        "against L1 + LS and random + LS (the same least squares)": (ours, ["L1 + LS", "random + LS"]),
        "selection alone (no LS): lasso against L1 and random": (
            "lasso (no LS)",
            ["L1 (Li et al.)", "random"],
        ),
    }
    out = []
    for factor in factors:
        rows = {r["method"]: r for r in summary["rows"] if r["factor"] == factor}
        for text, (mine, others) in groups.items():
            fit = all(rows[mine]["fit_error"][0] < rows[m]["fit_error"][0] for m in others)
            held = all(rows[mine]["heldout_error"][0] < rows[m]["heldout_error"][0] for m in others)
            acc = all(rows[mine]["test_acc"][0] > rows[m]["test_acc"][0] for m in others)
            numbers = ", ".join(
                f"{m} {rows[m]['heldout_error'][0]:.4f} / {100 * rows[m]['test_acc'][0]:.2f} %"
                for m in [mine, *others]
            )
            out.append(
                f"- {factor}×, {text}: lower fit error **{'yes' if fit else 'no'}**, lower held-out error "
                f"**{'yes' if held else 'no'}**, higher accuracy **{'yes' if acc else 'no'}** "
                f"(held-out error / accuracy, means over seeds: {numbers})."
            )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out error and accuracy per method at each reduction (grouped bars, std error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    factors = result["meta"]["factors"]
    methods = list(METHODS)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / len(methods)
    keys = [("fit_error", "relative error, fit samples"), ("heldout_error", "relative error, held-out")]
    for ax, (key, title) in zip(axes[:2], keys, strict=True):
        for j, m in enumerate(methods):
            rows = [
                next(r for r in summary["rows"] if r["factor"] == f and r["method"] == m) for f in factors
            ]
            ax.bar(
                [i + (j - (len(methods) - 1) / 2) * width for i in range(len(factors))],
                [r[key][0] for r in rows],
                width,
                yerr=[r[key][1] for r in rows],
                capsize=2,
                label=m,
            )
        ax.set_xticks(range(len(factors)), [f"{f}× fewer channels" for f in factors])
        ax.set_ylabel("mean ‖Y−Ŷ‖²/‖Y‖² over pruned layers (log)")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    dense = summary["dense"]["test_acc"]
    ax.axhspan(100 * (dense[0] - dense[1]), 100 * (dense[0] + dense[1]), color="gray", alpha=0.3)
    ax.axhline(100 * dense[0], color="gray", ls="--", label="dense")
    for j, m in enumerate(methods):
        rows = [next(r for r in summary["rows"] if r["factor"] == f and r["method"] == m) for f in factors]
        ax.bar(
            [i + (j - (len(methods) - 1) / 2) * width for i in range(len(factors))],
            [100 * r["test_acc"][0] for r in rows],
            width,
            yerr=[100 * r["test_acc"][1] for r in rows],
            capsize=2,
            label=m,
        )
    ax.set_xticks(range(len(factors)), [f"{f}× fewer channels" for f in factors])
    ax.set_ylabel("test accuracy (%), no fine-tuning")
    ax.set_ylim(0, 100)
    ax.set_title(f"{MODEL}, MNIST subset, {len(result['meta']['seeds'])} seed(s), mean ± std")
    ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (channel_pruning_quick.*)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=Setup.epochs)
    parser.add_argument("--sample-images", type=int, default=Setup.sample_images)
    parser.add_argument(
        "--factors", type=int, nargs="+", default=list(RATIOS), help="channel reductions (2 4)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    unknown = sorted(set(args.factors) - set(RATIOS))
    if unknown:
        parser.error(f"--factors must be among {sorted(RATIOS)}, got {unknown}")
    if args.quick:
        seeds, setup = [0], Setup(epochs=1, limit_batches=10, sample_images=100)
    else:
        seeds, setup = args.seeds, Setup(epochs=args.epochs, sample_images=args.sample_images)
    ratios = {f: RATIOS[f] for f in args.factors}
    runs = [run_seed(seed, setup, ratios) for seed in seeds]
    summary = aggregate(runs, ratios)
    factors = list(ratios)
    result: dict[str, Any] = {
        "meta": {
            "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
            "environment": environment(1),
            "model": MODEL,
            "input_shape": SHAPE,
            "seeds": seeds,
            "factors": factors,
            "ratios": ratios,
            "methods": {label: {"method": m, "reconstruct": r} for label, (m, r) in METHODS.items()},
            "setup": asdict(setup),
            "setup_text": setup.describe(),
            "verdict": verdict(summary, factors),
            "wall_s": time.perf_counter() - start,
        },
        "summary": summary,
        "runs": runs,
    }
    paths = write_results(
        args.out, output_stem(NAME, args.quick), result, to_markdown(result), partial(plot, result)
    )
    print("\n".join(result["meta"]["verdict"]))
    print(f"wrote {', '.join(str(p) for p in paths)} in {result['meta']['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
