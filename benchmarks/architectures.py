"""Efficient architectures: (a) accuracy vs MACs on the MNIST subset, (b) ShuffleNet v2's guidelines G1/G2.

(a) Scaled-down MobileNetV1/V2, ShuffleNet v1/v2, EfficientNet-B0 and MnasNet-A1 with their small-input
    stems, plus dense small CNNs (VGG-small, ResNet-20), trained with one identical budget on the
    5,000-image MNIST subset (3,500 train / 500 val / 1,000 test), 3 seeds, test accuracy mean ± std.
(b) ShuffleNet v2 (Ma et al., arXiv 1807.11164) Tables 1 and 2 on this CPU: a stack of 10 blocks of two
    1×1 convs (c1→c2→c1) at equal MACs for c1:c2 = 1:1, 1:2, 1:6, 1:12 (G1: equal widths are fastest),
    and a stack of 10 1×1 group convs at equal MACs for g = 1, 2, 4, 8 (G2: groups cost memory access),
    56×56 inputs at batch 1, the paper's channel counts (its GPU column) at scale ×1 and ×2. All
    variants of a table are timed round-robin (interleaved), median of repeats after warm-up.

Run: ``python -m benchmarks --only architectures`` (or ``python benchmarks/architectures.py``);
``--quick`` is a seconds-long smoke run that writes ``architectures_quick.*`` instead; ``--part accuracy``
or ``--part guidelines`` reruns one part and keeps the other from the existing JSON. Budget: about 15-20
minutes on 2 idle cores (accuracy: 30 runs of 3 epochs, 2 single-threaded runs at a time; guidelines:
about 2 minutes); a busy shared machine takes several times longer.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
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
    quiet_trainer,
    seed_all,
    write_results,
)
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

NAME = "architectures"
HW = 56  # input side of the paper's G1/G2 experiments
G1_BASE = [(128, 128), (90, 180), (52, 312), (36, 432)]  # (c1, c2) for ×1, Table 1 of arXiv 1807.11164
G2_BASE = [(128, 1), (180, 2), (256, 4), (360, 8)]  # (c, g) for ×1, Table 2 of arXiv 1807.11164

# (label, registry name, constructor options): small-input stems are chosen automatically at 28×28.
# The dense baselines have BatchNorm: LeNet-5 (no BN) diverged on 1 of 3 seeds at this learning rate, and
# gradient clipping (which saved it) cost the BN nets up to 17 points in 3 epochs, so it is not used.
MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("VGG-small (dense)", "vgg_small", {}),
    ("ResNet-20 (dense)", "resnet20", {}),
    ("MobileNetV1 0.25", "mobilenet_v1", {"width_mult": 0.25}),
    ("MobileNetV1 0.5", "mobilenet_v1", {"width_mult": 0.5}),
    ("MobileNetV2 0.25", "mobilenet_v2", {"width_mult": 0.25}),
    ("MobileNetV2 0.5", "mobilenet_v2", {"width_mult": 0.5}),
    ("ShuffleNet v1 0.5x g=3", "shufflenet_v1", {"groups": 3, "scale": 0.5}),
    ("ShuffleNet v2 0.5x", "shufflenet_v2", {"width_mult": 0.5}),
    ("EfficientNet-B0 w0.25 d0.5", "efficientnet", {"width_mult": 0.25, "depth_mult": 0.5}),
    ("MnasNet-A1 0.25", "mnasnet_a1", {"width_mult": 0.25}),
]


# -- (b) ShuffleNet v2 guidelines --------------------------------------------------------------------------


def g1_macs(c1: int, c2: int, hw: int = HW, blocks: int = 10) -> int:
    """MACs of ``blocks`` blocks of two 1×1 convs c1→c2→c1 on hw×hw maps: ``2·blocks·hw²·c1·c2``."""
    return 2 * blocks * hw * hw * c1 * c2


def g2_macs(c: int, groups: int, hw: int = HW, layers: int = 10) -> int:
    """MACs of ``layers`` 1×1 group convs c→c with ``groups`` groups: ``layers·hw²·c²/g``."""
    return layers * hw * hw * c * c // groups


def g1_net(c1: int, c2: int, blocks: int = 10) -> nn.Sequential:
    """10 blocks of two bias-free 1×1 convs, c1→c2 then c2→c1 (no BN or ReLU: only the convs are timed)."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(c1, c2, 1, bias=False), nn.Conv2d(c2, c1, 1, bias=False)]
    return nn.Sequential(*layers)


GuidelineNet = tuple[str, nn.Module, tuple[int, int, int], int]


def g1_nets(scale: int, tiny: bool = False) -> list[GuidelineNet]:
    """(label, net, input shape, MACs) of Table 1; ``tiny`` uses 8×8 maps for smoke tests."""
    hw = 8 if tiny else HW
    nets: list[GuidelineNet] = []
    for c1, c2 in ((c1 * scale, c2 * scale) for c1, c2 in G1_BASE):
        label = f"1:{round(c2 / c1)} ({c1},{c2})"
        nets.append((label, g1_net(c1, c2), (c1, hw, hw), g1_macs(c1, c2, hw)))
    return nets


def g2_nets(scale: int, tiny: bool = False) -> list[GuidelineNet]:
    """(label, net, input shape, MACs) of Table 2: 10 bias-free 1×1 group convs c→c; ``tiny``: 8×8 maps."""
    hw = 8 if tiny else HW
    nets: list[GuidelineNet] = []
    for c, g in ((c * scale, g) for c, g in G2_BASE):
        net = nn.Sequential(*(nn.Conv2d(c, c, 1, groups=g, bias=False) for _ in range(10)))
        nets.append((f"g={g} (c={c})", net, (c, hw, hw), g2_macs(c, g, hw)))
    return nets


def time_guideline_nets(
    nets: Sequence[GuidelineNet], threads: int, repeats: int = 15, warmup: int = 3
) -> list[dict[str, Any]]:
    """Time each net at batch 1 under ``torch.inference_mode``, interleaved round-robin after warm-up.

    Returns one row per net: label, MACs, median / p25 / p75 latency (ms), images per second (1000 /
    median) and the median relative to the first net's.
    """
    times: list[list[float]] = [[] for _ in nets]
    inputs = [torch.randn(1, *shape) for _, _, shape, _ in nets]
    with num_threads(threads), torch.inference_mode():
        for _, net, _, _ in nets:
            net.eval()
        for _ in range(warmup):
            for (_, net, _, _), x in zip(nets, inputs, strict=True):
                net(x)
        for _ in range(repeats):
            for i, ((_, net, _, _), x) in enumerate(zip(nets, inputs, strict=True)):
                start = time.perf_counter()
                net(x)
                times[i].append((time.perf_counter() - start) * 1e3)
    rows: list[dict[str, Any]] = []
    for (label, _, shape, macs), t in zip(nets, times, strict=True):
        q = quartiles(t)
        rows.append({"config": label, "input": list(shape), "macs": macs, "latency_ms": q["median"]})
        rows[-1].update({"p25_ms": q["p25"], "p75_ms": q["p75"], "images_per_s": 1e3 / q["median"]})
    for row in rows:
        row["relative_latency"] = row["latency_ms"] / rows[0]["latency_ms"]
    return rows


# -- (a) accuracy vs MACs ----------------------------------------------------------------------------------

# The one training budget every model gets (also written to the results).
BUDGET: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 64,
    "optimizer": "SGD(lr=0.05, momentum=0.9, nesterov, weight_decay=5e-4)",
    "schedule": "OneCycleLR(max_lr=0.05) over all steps",
    "augment": False,
}


def train_one(
    name: str, options: dict[str, Any], seed: int, epochs: int, limit_batches: int | None
) -> dict[str, float]:
    """Train registry model ``name`` on the MNIST subset with :data:`BUDGET`; return test accuracy and time.

    The seed sets the weights, the shuffling and the stratified 3,500/500/1,000 split. One torch thread.
    """
    torch.set_num_threads(1)
    start = time.perf_counter()
    seed_all(seed)
    dm = MNISTSubsetDataModule(batch_size=BUDGET["batch_size"], seed=seed, augment=BUDGET["augment"])
    model = create(name, num_classes=dm.num_classes, input_shape=dm.input_shape, **options)
    steps = epochs * (limit_batches or -(-3500 // BUDGET["batch_size"]))
    module = ClassificationModule(
        model,
        num_classes=dm.num_classes,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=steps),
        scheduler_interval="step",
        input_shape=dm.input_shape,
    )
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0, limit_train_batches=limit_batches)
    trainer.fit(module, datamodule=dm)
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - start
    print(f"  {name} {options} seed {seed}: test acc {result['test/acc']:.4f} in {seconds:.0f} s", flush=True)
    return {"test_acc": float(result["test/acc"]), "train_s": seconds}


def accuracy_vs_macs(
    models: Sequence[tuple[str, str, dict[str, Any]]],
    seeds: Sequence[int],
    epochs: int,
    limit_batches: int | None = None,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Train every (model, seed) pair, ``workers`` single-threaded processes at a time; one row per model."""
    jobs = [(name, options, seed, epochs, limit_batches) for _, name, options in models for seed in seeds]
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(train_one, *zip(*jobs, strict=True)))
    else:
        results = [train_one(*job) for job in jobs]
    rows = []
    for i, (label, name, options) in enumerate(models):
        runs = results[i * len(seeds) : (i + 1) * len(seeds)]
        model = create(name, num_classes=10, input_shape=(1, 28, 28), **options)
        prof = profile(model, (1, 28, 28), latency=False)
        accs = [r["test_acc"] for r in runs]
        mean, std = mean_std(accs)
        row = {"model": label, "name": name, "options": options, "macs": prof.macs, "params": prof.params}
        rows.append(row | {"test_acc": accs, "acc_mean": mean, "acc_std": std})
        rows[-1]["train_s_mean"] = statistics.fmean(r["train_s"] for r in runs)
    return rows


# -- output ------------------------------------------------------------------------------------------------

GUIDELINE_TEXT = {
    "g1": (
        "G1: 1×1 convs at equal MACs, varying c1:c2 (Table 1 of arXiv 1807.11164)",
        "10 blocks of two 1×1 convs, c1→c2 then c2→c1.",
        "c1:c2 (c1,c2)",
    ),
    "g2": (
        "G2: 1×1 group convs at equal MACs, varying g (Table 2 of arXiv 1807.11164)",
        "10 1×1 group convs c→c; c grows with √g to hold MACs = 10·56²·c²/g.",
        "groups (c)",
    ),
}


def to_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: setup, definitions, a computed summary and the tables."""
    meta, env = result["meta"], result["meta"]["environment"]
    lines = [
        "# Efficient architectures: accuracy vs MACs, and ShuffleNet v2's guidelines on this CPU",
        "",
        f"Reproduce: `{command_line(NAME, [])}` (both parts). Torch {env['torch']}, lightning "
        f"{env['lightning']} on {env['machine']}, {env['cpus']} CPUs. As run, with wall time and the 1-min load"
        f" average at start (the machine is shared): accuracy `{meta.get('accuracy_command')}` "
        f"{meta.get('accuracy_wall_s', 0):.0f} s (load {meta.get('accuracy_load_avg', 0):.1f}); guidelines "
        f"`{meta.get('guidelines_command')}` {meta.get('guidelines_wall_s', 0):.0f} s "
        f"(load {meta.get('guidelines_load_avg', 0):.1f}).",
        "",
        "## Definitions",
        "",
        "- " + DEFINITIONS["macs"] + " Here at batch 1 by `effdl_lightning.measure.profile`; BN, activations,"
        " pooling, SE gating and channel shuffles are not counted. **Params** = all parameters (BN included).",
        "- " + DEFINITIONS["timing"],
        "- " + DEFINITIONS["seeds"],
        "",
        "## Summary",
        "",
    ]
    if result["accuracy"]:
        best = max(result["accuracy"], key=lambda r: r["acc_mean"])
        cheapest = min(result["accuracy"], key=lambda r: r["macs"])
        stds = [100 * r["acc_std"] for r in result["accuracy"]]
        lines.append(
            f"- (a) Most accurate: {best['model']} {100 * best['acc_mean']:.2f} % at {best['macs'] / 1e6:.1f}M "
            f"MACs; fewest MACs: {cheapest['model']} {100 * cheapest['acc_mean']:.2f} % at "
            f"{cheapest['macs'] / 1e6:.1f}M MACs; seed std {min(stds):.2f}-{max(stds):.2f} points."
        )
    for key, what in (("g1", "the most unequal c1:c2"), ("g2", "the most groups")):
        ratios = [
            f"×{b['scale']} {b['threads']}T {b['rows'][-1]['relative_latency']:.2f}×" for b in result[key]
        ]
        if ratios:
            lines.append(
                f"- (b) {key.upper()}: latency of {what} relative to the first variant: {', '.join(ratios)}."
            )
    if result["accuracy"]:
        lines += [
            "",
            "## (a) Test accuracy vs MACs on the MNIST subset (1×28×28, small-input stems)",
            "",
            f"Data: 5,000-image MNIST subset, stratified split 3,500 train / 500 val / 1,000 test by seed. Seeds "
            f"{meta['seeds']} (weights, shuffling and split); accuracy on the 1,000 test images. Identical budget "
            "for every model: " + ", ".join(f"{k} {v}" for k, v in meta["budget"].items()) + f"; one torch "
            f"thread per run, {meta['workers']} runs in parallel (train s / run includes that contention).",
            "",
        ]
        header: tuple[str, ...] = (
            "model",
            "MACs",
            "params",
            "test acc (mean ± std)",
            "per-seed",
            "train s / run",
        )
        lines += md_table(
            header,
            (
                (
                    r["model"],
                    f"{r['macs'] / 1e6:.2f}M",
                    f"{r['params'] / 1e3:.0f}k",
                    f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} %",
                    ", ".join(f"{a:.3f}" for a in r["test_acc"]),
                    f"{r['train_s_mean']:.0f}",
                )
                for r in result["accuracy"]
            ),
            align="lrrrlr",
        )
    for key, (title, what, note) in GUIDELINE_TEXT.items():
        if not result[key]:
            continue
        lines += [
            "",
            f"## (b) {title}",
            "",
            f"{what} Eager PyTorch, batch 1, {meta['guideline_hw']}² input, no BN/ReLU; the four variants of "
            f"a row group timed round-robin, {meta['guideline_repeats']} repeats after "
            f"{meta['guideline_warmup']} warm-up round(s); relative = median / the first variant's median; "
            "threads = torch intra-op threads.",
            "",
        ]
        header = ("scale", "threads", note, "MACs", "median ms (p25-p75)", "images/s", "relative")
        rows = [
            (
                f"×{block['scale']}",
                block["threads"],
                r["config"],
                f"{r['macs'] / 1e6:.0f}M",
                f"{r['latency_ms']:.2f} ({r['p25_ms']:.2f}-{r['p75_ms']:.2f})",
                f"{r['images_per_s']:.1f}",
                f"{r['relative_latency']:.2f}",
            )
            for block in result[key]
            for r in block["rows"]
        ]
        lines += md_table(header, rows, align="rrlrrrr")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs MACs (log x, error bars = std) and the G1/G2 relative latencies, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for r in result["accuracy"]:
        x, y = r["macs"] / 1e6, 100 * r["acc_mean"]
        ax.errorbar(x, y, yerr=100 * r["acc_std"], fmt="o", capsize=3, label=r["model"])
    if result["accuracy"]:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set(
        xlabel="MACs at 1×28×28 (millions, log scale)",
        ylabel="test accuracy (%), mean ± std",
        title=f"MNIST subset, {len(result['meta']['seeds'])} seed(s), same budget",
    )
    for ax, key in zip(axes[1:], ("g1", "g2"), strict=True):
        width = 0.8 / max(1, len(result[key]))
        for j, block in enumerate(result[key]):
            xs = [i + j * width for i in range(len(block["rows"]))]
            ax.bar(
                xs,
                [r["relative_latency"] for r in block["rows"]],
                width,
                label=f"×{block['scale']}, {block['threads']} thread(s)",
            )
        labels = [r["config"].split(" ")[0] for r in result[key][0]["rows"]] if result[key] else []
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
        ax.axhline(1.0, color="gray", lw=0.8)
        what = "c1:c2" if key == "g1" else "groups"
        ax.set(ylabel="latency / first variant's (batch 1)", title=f"{key.upper()}: {what} at equal MACs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (architectures_quick.*)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=BUDGET["epochs"])
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--part",
        choices=("all", "accuracy", "guidelines", "report"),
        default="all",
        help="run one part only, keeping the other from the existing JSON ('report': only rewrite MD/PNG)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    stem = output_stem(NAME, quick)
    json_path = args.out / f"{stem}.json"
    previous = json.loads(json_path.read_text()) if args.part != "all" and json_path.exists() else {}
    if args.part == "report" and not previous:
        parser.error(f"--part report needs {json_path}")
    result: dict[str, Any] = {"meta": {}, "accuracy": [], "g1": [], "g2": []} | previous
    command = command_line(NAME, sys.argv[1:] if argv is None else argv)
    result["meta"]["environment"] = environment(1)
    if args.part in ("all", "accuracy"):
        start, load = time.perf_counter(), os.getloadavg()[0]
        models = [MODELS[0], MODELS[4], MODELS[7]] if quick else MODELS
        seeds = [0] if quick else args.seeds
        epochs = 1 if quick else args.epochs
        workers = 1 if quick else args.workers
        result["accuracy"] = accuracy_vs_macs(models, seeds, epochs, 3 if quick else None, workers)
        budget = {**BUDGET, "epochs": epochs} | ({"limit_train_batches": 3} if quick else {})
        result["meta"].update({"seeds": seeds, "budget": budget, "workers": workers})
        result["meta"].update({"accuracy_wall_s": time.perf_counter() - start, "accuracy_load_avg": load})
        result["meta"]["accuracy_command"] = command
    if args.part in ("all", "guidelines"):
        start, load = time.perf_counter(), os.getloadavg()[0]
        repeats, warmup, hw = (3, 1, 8) if quick else (25, 3, HW)
        result["g1"], result["g2"] = [], []
        for threads in (1,) if quick else (1, 2):
            for scale in (1,) if quick else (1, 2):
                for key, builder in (("g1", g1_nets), ("g2", g2_nets)):
                    rows = time_guideline_nets(builder(scale, tiny=quick), threads, repeats, warmup)
                    result[key].append({"scale": scale, "threads": threads, "rows": rows})
                    timings = [f"{r['config']}: {r['latency_ms']:.1f} ms" for r in rows]
                    print(key, f"x{scale}", f"{threads}T", timings, flush=True)
        result["meta"].update({"guideline_repeats": repeats, "guideline_warmup": warmup, "guideline_hw": hw})
        result["meta"].update({"guidelines_wall_s": time.perf_counter() - start, "guidelines_load_avg": load})
        result["meta"]["guidelines_command"] = command
    paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
