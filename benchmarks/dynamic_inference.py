"""Dynamic inference (issue 9): early exits (MSDNet), SkipNet gates and CondConv, with measured savings.

Every network is trained on the MNIST subset (1×28×28; stratified 3,500 / 500 / 1,000 train / val / test split
by seed, no augmentation) at batch 64 with SGD (momentum 0.9, Nesterov, weight decay 5e-4) and a cosine
schedule over the run, one torch thread per run, ``--workers`` runs in parallel, 3 seeds; the compared
networks of a part get the same epochs and learning rate (the presets' rates: ``conf/experiment/``).

(1) ``early_exit``: the registry's MSDNet (3 scales, 3 blocks of 2 dense layers, one exit per block) trained
    by :class:`~effdl_lightning.modules.EarlyExitModule` (``Σ_k CE_k``). *Anytime prediction*: each exit's test
    accuracy and cumulative MACs (``exit_macs``). *Budgeted batch classification*: ``budgeted_evaluation``
    over MSDNet's 40 geometric budgets (``p = 0.05 .. 2.0``, thresholds fitted on the validation split),
    against independently trained networks of increasing size from the same family: single-exit MSDNets of
    1, 2 and 3 blocks (the first layer, blocks and transitions up to one classifier), same epochs. *Operating
    point*: per seed, the budget with the fewest validation MACs whose validation accuracy is at most 0.5
    points below the last exit's (chosen on validation, reported on test). *Wall-clock* (seed 0, batch 64,
    1 thread, the 15 full test batches): ``early_exit_predict`` with that budget's thresholds against the same
    network run whole on every sample (last exit only — the intermediate classifiers skipped; every exit,
    ``model(x)``; ``torch.compile`` and ONNX Runtime of the last-exit-only network), interleaved; the early exit
    also with compiled stages (``CompiledStages``) and on ONNX Runtime (``export_stages_onnx``, one graph per
    stage); goal ≥ 1.5×, fastest early exit against the fastest whole network.
(2) ``skipnet``: ResNet-20 at ``--skipnet-width`` (default 0.5: stage widths 8/16/32; 7 gated shape-keeping
    blocks, the 2 downsampling blocks stay on) with FFGate-II gates by
    :class:`~effdl_lightning.modules.SkipNetModule`: supervised (hard gates, straight-through) epochs, then
    hybrid-RL epochs with skip reward α ∈ {0.1, 0.01, 0.001} (the issue's, as in the paper) and α ∈ {1, 3}, each
    with gates initialized open and with the reference code's random gate initialization; against the ungated
    ResNet-20 trained for the same total epochs. A longer budget (``--skipnet-long-rl`` hybrid-RL epochs, default
    12) for random-init α ∈ {0.1, 0.001} and the ungated network trained as long. Test skip ratio, accuracy, average executed MACs (really skipped at evaluation), and the
    seed-0 wall-clock at batch 64, 1 thread, interleaved.
(3) ``condconv``: VGG-small (32/64/128) with every conv a 4-expert ``CondConv2d``
    (``replace_convs_with_condconv_``, the ``+model.conv=condconv`` switch) against the static VGG-small of the
    same widths and a static one widened to the CondConv MACs (closest ``(c, 2c, 4c)``); test accuracy, MACs
    (routing + kernel mixing + conv, ``condconv_macs``), params, and the seed-0 wall-clock at batch 64.

Run: ``python -m benchmarks --only dynamic_inference`` (defaults: 6 epochs per early-exit network, SkipNet 3
supervised + 3 hybrid-RL epochs and the 3 + 12 arms, 15 CondConv epochs; 63 training runs). Measured: 148
core-minutes of single-threaded training (early exit 53, SkipNet 76, CondConv 19; the recorded runs' sums), so
≈ 75 minutes in 2 parallel workers on 2 quiet cores, plus ≈ 8 minutes of timing, exporting and compiling;
about twice that on a shared machine. ``--quick`` (about a minute:
seed 0, 3 batches per epoch, no compile, no ONNX) writes ``dynamic_inference_quick.*`` instead. ``--part early_exit|skipnet|condconv`` reruns one part and keeps the
others from the existing JSON. Finished training runs are kept in ``dynamic_inference_runs.jsonl`` and reused
unless ``--fresh``; the timed seed-0 networks are kept in ``--workdir`` (a missing one is retrained).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
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
    quartiles,
    quiet,
    quiet_trainer,
    seed_all,
    write_results,
)
from benchmarks._quant_common import load_rows, run_jobs
from benchmarks.sparse_inference import time_round_robin
from benchmarks.structured_pruning import export_onnx, ort_runner
from effdl_lightning.core.dynamic import (
    CompiledStages,
    assign_exits,
    early_exit_inference,
    gated_blocks,
    macs_table,
)
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.export import export_stages_onnx
from effdl_lightning.measure import profile, register_macs_rule
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.models import create
from effdl_lightning.models.condconv import CondConv2d, condconv_macs, replace_convs_with_condconv_
from effdl_lightning.models.msdnet import MSDNet
from effdl_lightning.modules import ClassificationModule, EarlyExitModule, SkipNetModule

# the MACs rule of CondConv2d (routing + mixing + conv), registered as effdl_lightning.run does
register_macs_rule(CondConv2d, condconv_macs)

NAME = "dynamic_inference"
PARTS = ("early_exit", "skipnet", "condconv")
SHAPE = (1, 28, 28)
BATCH = 64
CLASSES = 10
TOL = 0.005  # the operating point may lose at most 0.5 points against the last exit (on validation)
GOAL = 1.5  # wall-clock speedup of early exit asked for at batch 64
ALPHAS = (3.0, 1.0, 0.1, 0.01, 0.001)
LONG_ALPHAS = (0.1, 0.001)  # the paper's largest and smallest, with --skipnet-long-rl hybrid-RL epochs
MSDNET: dict[str, Any] = {
    "num_blocks": 3,
    "step": 2,
    "scales": 3,
    "channels": 8,
    "growth": 4,
    "head_channels": 32,
}
BASELINE_BLOCKS = (1, 2, 3)
VGG_WIDTHS: tuple[int | str, ...] = (32, "M", 64, "M", 128, "M")
EXPERTS = 4
LR = {"early_exit": 0.1, "skipnet": 0.1, "condconv": 0.05}  # the presets' learning rates
QUICK_LIMIT = 3  # training batches per epoch in --quick
TABLE_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)  # the budgets shown in the Markdown table

EE_MULTI = "MSDNet, 3 exits"
UNGATED = "ungated"
CONDCONV, STATIC, WIDE = "CondConv", "static", "static, equal MACs"
EE_VARIANT = "early exit"
EE_COMPILED = "early exit, compiled stages"
EE_BUCKETS = "early exit, compiled stages, static buckets"
EE_ORT = "early exit, ONNX Runtime stages"
BUCKETS = (8, 16, 32, 64)  # CompiledStages(buckets=...): the remaining samples are padded up to one of these
WHOLE, WHOLE_ALL, WHOLE_COMPILED, WHOLE_ORT = (
    "whole, last exit only",
    "whole, every exit",
    "whole, last exit only, compiled",
    "whole, last exit only, ONNX Runtime",
)
EE_KINDS = (EE_VARIANT, EE_COMPILED, EE_BUCKETS, EE_ORT)


def single_arm(blocks: int) -> str:
    return f"MSDNet-{blocks} block{'s' if blocks > 1 else ''}, single exit"


def skip_arm(alpha: float | None, init: str = "open", epochs: Sequence[int] | None = None) -> str:
    """``SkipNet α=0.1`` (open gate init, default budget), ``…, random init``, ``…, 3+12 epochs``;
    ``ungated`` / ``ungated, 15 epochs`` when ``alpha`` is None."""
    name = (
        UNGATED if alpha is None else f"SkipNet α={alpha:g}" + (", random init" if init == "random" else "")
    )
    if epochs is None:
        return name
    return name + (f", {sum(epochs)} epochs" if alpha is None else f", {epochs[0]}+{epochs[1]} epochs")


class SingleExitMSDNet(nn.Module):
    """An MSDNet's path to its last exit only: first layer, blocks, transitions and the last classifier.

    Built from a trained multi-exit MSDNet it shares that network's modules (the whole network without the
    intermediate classifiers); built from a fresh ``MSDNet(num_blocks=k)`` it is the single-exit network of
    that depth (its intermediate classifiers are not kept, so neither counted nor computed).
    """

    def __init__(self, net: MSDNet) -> None:
        super().__init__()
        self.first, self.blocks, self.transitions = net.first, net.blocks, net.transitions
        self.classifier = net.classifiers[-1]

    def forward(self, x: Tensor) -> Tensor:
        state = self.first(x)
        for index, block in enumerate(self.blocks):
            if index > 0:
                state = self.transitions[index - 1](state)
            state = block(state)
        return self.classifier(state[-1])


# -- training runs (one per part, arm and seed; in worker processes) ----------------------------------------


def macs(model: nn.Module) -> float:
    return float(profile(model, SHAPE, latency=False).macs)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def optimizer(lr: float) -> Any:
    return partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def cosine(epochs: int) -> Any:
    return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(1, epochs))


def fit(module: Any, dm: MNISTSubsetDataModule, epochs: int, limit: int | None) -> tuple[float, int]:
    """Train quietly without validation; returns (seconds, optimizer steps)."""
    module.train()
    trainer = quiet_trainer(max_epochs=epochs, limit_train_batches=limit, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start, int(trainer.global_step)


def accuracy(model: nn.Module, loader: Any) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def build(part: str, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The untrained network of a run and its LightningModule (the network is changed in place by it)."""
    lr, epochs = LR[part], sum(config["epochs"]) if part == "skipnet" else config["epochs"]
    common = {"optimizer": optimizer(lr), "scheduler": cosine(epochs), "input_shape": SHAPE}
    if part == "early_exit":
        net = create("msdnet", num_classes=CLASSES, input_shape=SHAPE, **config["msdnet"])
        if config["kind"] == "single":
            single = SingleExitMSDNet(net)
            return single, ClassificationModule(single, CLASSES, **common)
        return net, EarlyExitModule(net, CLASSES, **common)
    if part == "skipnet":
        net = create("resnet20", num_classes=CLASSES, input_shape=SHAPE, width=config["width"])
        if config.get("alpha") is None:
            return net, ClassificationModule(net, CLASSES, **common)
        alpha, rl_start = config["alpha"], config["epochs"][0]
        # runs recorded before `gate_init` existed had open gates (then the only initialization)
        init = config.get("gate_init", "open")
        return net, SkipNetModule(
            net, CLASSES, alpha=alpha, rl_start_epoch=rl_start, gate_init=init, **common
        )
    net = create("vgg_small", num_classes=CLASSES, input_shape=SHAPE, widths=list(config["widths"]))
    if config.get("experts"):
        replace_convs_with_condconv_(net, num_experts=config["experts"])
    return net, ClassificationModule(net, CLASSES, **common)


def point_dict(point: Any, exit_macs: Sequence[int]) -> dict[str, Any]:
    """A ``BudgetPoint`` as plain numbers, with the average MACs its validation fractions give."""
    return {
        "p": point.budget,
        "thresholds": point.thresholds,
        "target_fractions": point.target_fractions,
        "exit_fractions": point.exit_fractions,
        "val_fractions": point.val_fractions,
        "avg_macs": point.avg_macs,
        "val_avg_macs": sum(f * c for f, c in zip(point.val_fractions, exit_macs, strict=True)),
        "accuracy": point.accuracy,
        "val_accuracy": point.val_accuracy,
    }


def choose(curve: list[dict[str, Any]], val_last: float, test_last: float) -> dict[str, Any]:
    """The operating point: fewest validation MACs with validation accuracy ≥ the last exit's − TOL.

    Falls back to the most accurate budget on validation when none qualifies. Also records the test-side
    ("oracle") choice for reference.
    """
    ok = [i for i, c in enumerate(curve) if c["val_accuracy"] >= val_last - TOL - 1e-9]
    if ok:
        index = min(ok, key=lambda i: (curve[i]["val_avg_macs"], -curve[i]["val_accuracy"]))
    else:
        index = max(range(len(curve)), key=lambda i: curve[i]["val_accuracy"])
    oracle = [i for i, c in enumerate(curve) if c["accuracy"] >= test_last - TOL - 1e-9]
    point = curve[index]
    return {
        **point,
        "index": index,
        "met_on_val": bool(ok),
        "val_drop": val_last - point["val_accuracy"],
        "test_drop": test_last - point["accuracy"],
        "oracle_index": min(oracle, key=lambda i: curve[i]["avg_macs"]) if oracle else None,
    }


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one network and evaluate it; the seed-0 networks that are timed are saved to ``model_path``."""
    torch.set_num_threads(1)
    quiet()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    part, config = job["part"], job["config"]
    seed_all(job["seed"])
    dm = MNISTSubsetDataModule(batch_size=BATCH, seed=job["seed"], augment=False)
    dm.setup()
    net, module = build(part, config)
    epochs = sum(config["epochs"]) if part == "skipnet" else config["epochs"]
    train_s, steps = fit(module, dm, epochs, config["limit"])
    out: dict[str, Any] = {"train_s": train_s, "steps": steps, "params": params(net)}
    if part == "early_exit" and config["kind"] == "multi":
        test = module.anytime_evaluation(dm.test_dataloader())
        val = module.anytime_evaluation(dm.val_dataloader())
        points = module.budgeted_evaluation(dm.val_dataloader(), dm.test_dataloader())
        curve = [point_dict(p, test.macs) for p in points]
        out |= {
            "test_acc": test.accuracy[-1],
            "exit_acc": test.accuracy,
            "exit_val_acc": val.accuracy,
            "exit_macs": test.macs,
            "macs": test.macs[-1],
            "macs_last_only": macs(SingleExitMSDNet(net)),
            "curve": curve,
            "chosen": choose(curve, val.accuracy[-1], test.accuracy[-1]),
        }
    elif part == "skipnet":
        # the plain network's MACs (`net` is gated in place by SkipNetModule)
        before = macs(create("resnet20", num_classes=CLASSES, input_shape=SHAPE, width=config["width"]))
        gates = gated_blocks(net)
        for block in gates.values():
            block.reset_stats()
        (res,) = quiet_trainer().test(module, datamodule=dm, verbose=False)
        out |= {"test_acc": float(res["test/acc"]), "macs_ungated": before, "gates": len(gates)}
        if gates:
            table = macs_table(net, torch.zeros(1, *SHAPE))
            out |= {
                "skip_ratio": float(res["test/skip_ratio"]),
                "avg_macs": float(res["test/avg_macs"]),
                "macs_all_open": table.full,
                "executed": {n: b.samples_in / max(1, b.samples_seen) for n, b in gates.items()},
            }
        else:
            out |= {"skip_ratio": 0.0, "avg_macs": before, "macs_all_open": before, "executed": {}}
    else:
        out |= {"test_acc": accuracy(net, dm.test_dataloader()), "macs": macs(net)}
    if job.get("model_path"):
        Path(job["model_path"]).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), job["model_path"])
    return {**job, **out, "seconds": time.perf_counter() - start}


# -- jobs -----------------------------------------------------------------------------------------------------


def equal_macs_widths(experts: int) -> tuple[list[int | str], float]:
    """The static VGG-small widths ``(c, 2c, 4c)`` whose MACs are closest to the CondConv model's; its MACs."""
    cond = create("vgg_small", num_classes=CLASSES, input_shape=SHAPE, widths=list(VGG_WIDTHS))
    replace_convs_with_condconv_(cond, num_experts=experts)
    target = macs(cond)
    base = int(VGG_WIDTHS[0])
    best: tuple[list[int | str], float] | None = None
    for c in range(base, 2 * base + 1):
        widths: list[int | str] = [w if w == "M" else int(w) * c // base for w in VGG_WIDTHS]
        m = macs(create("vgg_small", num_classes=CLASSES, input_shape=SHAPE, widths=widths))
        if best is None or abs(m - target) < abs(best[1] - target):
            best = (widths, m)
        if m > target:
            break
    assert best is not None
    return best[0], target


def arms(part: str, args: argparse.Namespace, quick: bool) -> list[tuple[str, dict[str, Any], bool]]:
    """``(arm, config, timed)`` of a part; ``config`` is everything that changes a run's result."""
    limit = QUICK_LIMIT if quick else None
    if part == "early_exit":
        epochs = 1 if quick else args.ee_epochs
        out = [(EE_MULTI, {"kind": "multi", "msdnet": MSDNET, "epochs": epochs, "limit": limit}, True)]
        for k in BASELINE_BLOCKS:
            config = {
                "kind": "single",
                "msdnet": MSDNET | {"num_blocks": k},
                "epochs": epochs,
                "limit": limit,
            }
            out.append((single_arm(k), config, False))
        return out
    if part == "skipnet":
        epochs = [1, 1] if quick else list(args.skipnet_epochs)
        common = {"width": args.skipnet_width, "epochs": epochs, "limit": limit}
        out = [(UNGATED, common | {"alpha": None}, True)]
        out += [(skip_arm(a), common | {"alpha": a}, True) for a in ALPHAS]  # open gate init
        out += [(skip_arm(a, "random"), common | {"alpha": a, "gate_init": "random"}, True) for a in ALPHAS]
        if not quick and args.skipnet_long_rl:  # a longer hybrid-RL phase (not timed)
            long = common | {"epochs": [epochs[0], args.skipnet_long_rl]}
            out.append((skip_arm(None, epochs=long["epochs"]), long | {"alpha": None}, False))
            out += [
                (skip_arm(a, "random", long["epochs"]), long | {"alpha": a, "gate_init": "random"}, False)
                for a in LONG_ALPHAS
            ]
        return out
    epochs = 1 if quick else args.condconv_epochs
    wide, _ = equal_macs_widths(EXPERTS)
    common = {"epochs": epochs, "limit": limit}
    return [
        (CONDCONV, common | {"widths": list(VGG_WIDTHS), "experts": EXPERTS}, True),
        (STATIC, common | {"widths": list(VGG_WIDTHS), "experts": None}, True),
        (WIDE, common | {"widths": wide, "experts": None}, True),
    ]


def digest(job: dict[str, Any]) -> str:
    key = {k: job[k] for k in ("part", "arm", "seed", "config", "quick")}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def make_jobs(
    parts: Sequence[str], seeds: Sequence[int], args: argparse.Namespace, quick: bool, workdir: Path
) -> list[dict[str, Any]]:
    """Every run of ``parts``, the longest part (SkipNet) first so that the workers stay busy."""
    jobs = []
    for part in sorted(parts, key=("skipnet", "condconv", "early_exit").index):
        for arm, config, timed in arms(part, args, quick):
            for seed in seeds:
                job: dict[str, Any] = {
                    "part": part,
                    "arm": arm,
                    "seed": seed,
                    "config": config,
                    "quick": quick,
                }
                job["model_path"] = str(workdir / f"{digest(job)}.pt") if timed and seed == seeds[0] else None
                jobs.append(job)
    return jobs


def load_model(row: dict[str, Any]) -> nn.Module:
    """The trained network of ``row`` from its ``model_path``, in eval mode."""
    net, _ = build(row["part"], row["config"])
    net.load_state_dict(torch.load(row["model_path"], weights_only=True))
    return net.eval()


# -- timing (main process, one thread) ----------------------------------------------------------------------


def time_batches(
    variants: dict[str, Callable[[Tensor], Any]], batches: list[Tensor], warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Milliseconds per batch of each variant, interleaved round-robin; a sample is one pass over ``batches``."""
    calls = {name: partial(lambda _x, fn: [fn(b) for b in batches], fn=fn) for name, fn in variants.items()}
    samples = time_round_robin(calls, batches[0], warmup=warmup, rounds=rounds, inner=1)
    return {name: [t / len(batches) for t in times] for name, times in samples.items()}


def paired(samples: dict[str, list[float]], slow: str, fast: str) -> dict[str, float]:
    """``slow / fast``: ratio of medians, and p25-p75 of the per-round ratios."""
    q = quartiles([s / f for s, f in zip(samples[slow], samples[fast], strict=True)])
    ratio = quartiles(samples[slow])["median"] / quartiles(samples[fast])["median"]
    return {"ratio_of_medians": ratio, "paired_p25": q["p25"], "paired_p75": q["p75"]}


def early_exit_timing(
    row: dict[str, Any], batches: list[Tensor], warmup: int, rounds: int, use_compile: bool
) -> dict[str, Any]:
    """``early_exit_predict`` at the operating point against the whole network, seed 0, batch 64, 1 thread."""
    net = load_model(row)
    module = EarlyExitModule(net, CLASSES, input_shape=SHAPE).eval()
    whole = SingleExitMSDNet(net).eval()
    thresholds = [float(t) for t in row["chosen"]["thresholds"]]
    out: dict[str, Any] = {"thresholds": thresholds, "batches": len(batches), "rounds": rounds, "notes": {}}
    exits, agree, total = [], 0, 0
    with torch.inference_mode(), num_threads(1):
        for b in batches:
            result = module.early_exit_predict(b, thresholds)
            logits = torch.stack(net(b))
            reference = assign_exits(logits, thresholds)
            chosen = logits[reference, torch.arange(len(b))].argmax(1)
            agree += int((result.predictions == chosen).sum())
            total += len(b)
            exits.append(result.exit_index)
    counts = torch.bincount(torch.cat(exits), minlength=len(row["exit_macs"])).double()
    fractions = (counts / counts.sum()).tolist()
    out |= {"exit_fractions": fractions, "agreement": agree / total}
    out["avg_macs"] = sum(f * c for f, c in zip(fractions, row["exit_macs"], strict=True))
    variants: dict[str, Callable[[Tensor], Any]] = {
        EE_VARIANT: partial(module.early_exit_predict, thresholds=thresholds),
        WHOLE: whole,
        WHOLE_ALL: net,
    }
    with num_threads(1):
        if use_compile:
            try:
                start = time.perf_counter()
                compiled = torch.compile(whole, dynamic=False, options={"freezing": True})
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got, ref = compiled(batches[0]), whole(batches[0])
                err = float((got - ref).abs().max())
                if err > 1e-3 * float(ref.abs().max()) + 1e-4:
                    raise RuntimeError(f"output differs from eager by {err:.2e}")
                out["compile_s"] = time.perf_counter() - start
                variants[WHOLE_COMPILED] = compiled
            except Exception as error:  # a runtime that does not work here is a result, not a crash
                out["notes"][WHOLE_COMPILED] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            try:  # the early exit on the same compiler: every stage compiled, a dynamic batch dimension
                start = time.perf_counter()
                staged = CompiledStages(net)
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for b in batches:  # every batch: compile each stage for the sizes it will see
                        got = early_exit_inference(staged, b, thresholds)
                        ref = module.early_exit_predict(b, thresholds)
                        err = float((got.logits - ref.logits).abs().max())
                        if err > 1e-3 * float(ref.logits.abs().max()) + 1e-4:
                            raise RuntimeError(f"output differs from eager by {err:.2e}")
                out["compile_stages_s"] = time.perf_counter() - start
                variants[EE_COMPILED] = partial(early_exit_inference, staged, thresholds=thresholds)
            except Exception as error:
                out["notes"][EE_COMPILED] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            try:  # static graphs per (stage, bucket), weights folded as for the compiled whole network
                start = time.perf_counter()
                bucketed = CompiledStages(net, buckets=BUCKETS, dynamic=False, options={"freezing": True})
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for b in batches:
                        got = early_exit_inference(bucketed, b, thresholds)
                        ref = module.early_exit_predict(b, thresholds)
                        err = float((got.logits - ref.logits).abs().max())
                        if err > 1e-3 * float(ref.logits.abs().max()) + 1e-4:
                            raise RuntimeError(f"output differs from eager by {err:.2e}")
                out["compile_buckets_s"] = time.perf_counter() - start
                variants[EE_BUCKETS] = partial(early_exit_inference, bucketed, thresholds=thresholds)
            except Exception as error:
                out["notes"][EE_BUCKETS] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ort_variants(net, whole, module, batches, thresholds, variants, out)
        samples = time_batches(variants, batches, warmup, rounds)
    torch._dynamo.reset()
    ms = {k: quartiles(v) for k, v in samples.items()}
    ee_kinds = [k for k in EE_KINDS if k in ms]
    full = [k for k in ms if k not in ee_kinds]
    best = min(full, key=lambda k: ms[k]["median"])
    best_ee = min(ee_kinds, key=lambda k: ms[k]["median"])
    out |= {"ms": ms, "best_full": best, "best_ee": best_ee}
    out["speedup"] = {k: paired(samples, k, EE_VARIANT) for k in full}
    out["speedup_vs_best"] = paired(samples, best, best_ee)
    return out


def ort_variants(
    net: nn.Module,
    whole: nn.Module,
    module: EarlyExitModule,
    batches: list[Tensor],
    thresholds: list[float],
    variants: dict[str, Callable[[Tensor], Any]],
    out: dict[str, Any],
) -> None:
    """Add the whole network and the early exit on ONNX Runtime (1 thread) to ``variants``, each checked
    against eager PyTorch on every batch; a runtime that fails here is noted, not fatal."""
    try:
        start = time.perf_counter()
        run_whole = ort_runner(export_onnx(whole, SHAPE), threads=1)
        for b in batches:
            with torch.no_grad():
                ref = whole(b)
            err = float((run_whole(b) - ref).abs().max())
            if err > 1e-3 * float(ref.abs().max()) + 1e-4:
                raise RuntimeError(f"output differs from eager by {err:.2e}")
        out["ort_whole_s"] = time.perf_counter() - start
        variants[WHOLE_ORT] = run_whole
    except Exception as error:
        out["notes"][WHOLE_ORT] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    try:  # one graph per stage with a dynamic batch dimension, run by early_exit_inference
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            stages = export_stages_onnx(net, batches[0][:2], tmp, threads=1)
        for b in batches:
            got = early_exit_inference(stages, b, thresholds)
            ref = module.early_exit_predict(b, thresholds)
            err = float((got.logits - ref.logits).abs().max())
            if err > 1e-3 * float(ref.logits.abs().max()) + 1e-4 or not torch.equal(
                got.exit_index, ref.exit_index
            ):
                raise RuntimeError(f"exits or logits differ from eager (logits by {err:.2e})")
        out["ort_stages_s"] = time.perf_counter() - start
        variants[EE_ORT] = partial(early_exit_inference, stages, thresholds=thresholds)
    except Exception as error:
        out["notes"][EE_ORT] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"


def models_timing(
    rows: list[dict[str, Any]], reference: str, batches: list[Tensor], warmup: int, rounds: int
) -> dict[str, Any]:
    """Seed-0 networks of a part, eager, batch 64, 1 thread, interleaved; ratios against ``reference``."""
    nets = {row["arm"]: load_model(row) for row in rows}
    skip: dict[str, float] = {}
    with torch.inference_mode(), num_threads(1):
        for arm, net in nets.items():
            blocks = list(gated_blocks(net).values())
            if not blocks:
                continue
            for block in blocks:
                block.reset_stats()
            for b in batches:
                net(b)
            skip[arm] = 1 - sum(b.samples_in / b.samples_seen for b in blocks) / len(blocks)
        samples = time_batches(dict(nets), batches, warmup, rounds)
    ms = {k: quartiles(v) for k, v in samples.items()}
    speedup = {k: paired(samples, reference, k) for k in ms if k != reference}
    return {"ms": ms, "reference": reference, "speedup": speedup, "skip_ratio": skip, "batches": len(batches)}


# -- summaries ------------------------------------------------------------------------------------------------


def ms_dict(values: Sequence[float]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "values": list(values)}


def interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation of the curve ``(xs, ys)`` (sorted by x) at ``x``; None outside its range."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            span = xs[i] - xs[i - 1]
            t = 0.0 if span == 0 else (x - xs[i - 1]) / span
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


def summarize_early_exit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    multi = [r for r in rows if r["arm"] == EE_MULTI]
    if not multi:
        return {}
    k = len(multi[0]["exit_macs"])
    whole = multi[0]["macs_last_only"]
    exits = [
        {
            "exit": i + 1,
            "macs": multi[0]["exit_macs"][i],
            "acc": ms_dict([r["exit_acc"][i] for r in multi]),
            "val_acc": ms_dict([r["exit_val_acc"][i] for r in multi]),
        }
        for i in range(k)
    ]
    curve = []
    for i, point in enumerate(multi[0]["curve"]):
        per = [r["curve"][i] for r in multi]
        curve.append(
            {
                "p": point["p"],
                "avg_macs": ms_dict([c["avg_macs"] for c in per]),
                "acc": ms_dict([c["accuracy"] for c in per]),
                "exit_fractions": [sum(c["exit_fractions"][j] for c in per) / len(per) for j in range(k)],
            }
        )
    ordered = sorted(curve, key=lambda c: c["avg_macs"]["mean"])
    xs, ys = [c["avg_macs"]["mean"] for c in ordered], [c["acc"]["mean"] for c in ordered]
    baselines = []
    for blocks in BASELINE_BLOCKS:
        mine = [r for r in rows if r["arm"] == single_arm(blocks)]
        if not mine:
            continue
        acc = ms_dict([r["test_acc"] for r in mine])
        at = interp(mine[0]["macs"], xs, ys)
        baselines.append(
            {
                "arm": single_arm(blocks),
                "blocks": blocks,
                "macs": mine[0]["macs"],
                "params": mine[0]["params"],
                "acc": acc,
                "early_exit_acc_at_macs": at,
                "delta": None if at is None else at - acc["mean"],
            }
        )
    chosen = [r["chosen"] | {"seed": r["seed"]} for r in multi]
    return {
        "seeds": [r["seed"] for r in multi],
        "exits": exits,
        "macs_all_exits": multi[0]["exit_macs"][-1],
        "macs_last_only": whole,
        "params": multi[0]["params"],
        "curve": curve,
        "baselines": baselines,
        "operating_points": chosen,
        "operating": {
            "test_drop": ms_dict([c["test_drop"] for c in chosen]),
            "val_drop": ms_dict([c["val_drop"] for c in chosen]),
            "accuracy": ms_dict([c["accuracy"] for c in chosen]),
            "avg_macs": ms_dict([c["avg_macs"] for c in chosen]),
            "saved_vs_last_only": ms_dict([1 - c["avg_macs"] / whole for c in chosen]),
            "saved_vs_all_exits": ms_dict([1 - c["avg_macs"] / multi[0]["exit_macs"][-1] for c in chosen]),
            "met_on_val": all(c["met_on_val"] for c in chosen),
        },
    }


def _skipnet_order(config: dict[str, Any]) -> tuple[Any, ...]:
    """Budget, then gate init (open first), ungated first, then α from large to small."""
    alpha = config["alpha"]
    return (
        sum(config["epochs"]),
        config.get("gate_init", "open") != "open",
        alpha is not None,
        -(alpha or 0),
    )


def summarize_skipnet(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    configs = {r["arm"]: r["config"] for r in rows}
    for arm in sorted(configs, key=lambda a: _skipnet_order(configs[a])):
        mine = [r for r in rows if r["arm"] == arm]
        base = mine[0]["macs_ungated"]
        names = list(mine[0]["executed"])
        out.append(
            {
                "arm": arm,
                "alpha": mine[0]["config"]["alpha"],
                "gate_init": mine[0]["config"].get("gate_init", "open"),
                "epochs": mine[0]["config"]["epochs"],
                "seeds": [r["seed"] for r in mine],
                "gates": mine[0]["gates"],
                "params": mine[0]["params"],
                "acc": ms_dict([r["test_acc"] for r in mine]),
                "skip_ratio": ms_dict([r["skip_ratio"] for r in mine]),
                "avg_macs": ms_dict([r["avg_macs"] for r in mine]),
                "macs_fraction": ms_dict([r["avg_macs"] / base for r in mine]),
                "macs_ungated": base,
                "macs_all_open": mine[0]["macs_all_open"],
                "executed": {n: sum(r["executed"][n] for r in mine) / len(mine) for n in names},
            }
        )
    return {"rows": out}


def summarize_condconv(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    for arm in (CONDCONV, STATIC, WIDE):
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        widths = [w for w in mine[0]["config"]["widths"] if w != "M"]
        out.append(
            {
                "arm": arm,
                "seeds": [r["seed"] for r in mine],
                "widths": widths,
                "experts": mine[0]["config"]["experts"],
                "macs": mine[0]["macs"],
                "params": mine[0]["params"],
                "acc": ms_dict([r["test_acc"] for r in mine]),
            }
        )
    return {"rows": out}


SUMMARIES = {"early_exit": summarize_early_exit, "skipnet": summarize_skipnet, "condconv": summarize_condconv}


# -- Markdown -------------------------------------------------------------------------------------------------


def _pm(v: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"


def _seeds(v: dict[str, Any], scale: float = 100.0) -> str:
    return ", ".join(f"{scale * x:.1f}" for x in v["values"])


def _m(x: float) -> str:
    return f"{x / 1e6:.2f}M"


def _ms(q: dict[str, float]) -> str:
    return f"{q['median']:.2f} ({q['p25']:.2f}–{q['p75']:.2f})"


def _x(s: dict[str, float]) -> str:
    return f"{s['ratio_of_medians']:.2f}× ({s['paired_p25']:.2f}–{s['paired_p75']:.2f})"


def _thr(values: Sequence[float]) -> str:
    return ", ".join("∞" if math.isinf(v) else f"{v:.3f}" for v in values)


def _meta_line(meta: dict[str, Any]) -> str:
    return (
        f"Command `{meta['command']}`; {meta['runs']} runs of this part, {meta['train_s_total'] / 60:.1f} min of "
        f"training summed over runs (1 thread each, {meta['workers']} in parallel); invocation {meta['wall_s']:.0f} s, "
        f"1-min load average {meta['load_avg_start']:.1f} at its start and {meta['load_avg_end']:.1f} at its end "
        f"on {meta['cpus']} CPUs (other jobs share the machine when the load exceeds the workers)."
    )


def early_exit_markdown(part: dict[str, Any]) -> list[str]:
    s, meta = part["summary"], part["meta"]
    whole, allx = s["macs_last_only"], s["macs_all_exits"]
    lines = [
        "",
        "## (1) Early exits: MSDNet, anytime and budgeted batch classification",
        "",
        _meta_line(meta),
        "",
        f"MSDNet (`create('msdnet', **{MSDNET})`: 3 scales 28/14/7, 3 blocks of 2 dense layers, one exit "
        f"per block; {s['params']:,} parameters) trained by `EarlyExitModule` with `Σ_k CE_k`, "
        f"{meta['config']['epochs']} epochs, SGD lr {LR['early_exit']}, cosine; seeds {s['seeds']}. *Whole "
        f"network* = first layer, blocks, transitions and the last classifier: {_m(whole)} MACs "
        f"(`model(x)`, which also runs the intermediate classifiers: {_m(allx)}). Cumulative MACs `C_k` of exit "
        "k = every stage up to k with the classifiers of exits 1..k (`EarlyExitModule.exit_macs`). Accuracy = "
        "top-1 on the seed's 1,000 test images, in %.",
        "",
        "### Anytime prediction (every test sample at every exit)",
        "",
    ]
    rows = [
        (
            e["exit"],
            _m(e["macs"]),
            f"{e['macs'] / whole:.2f}×",
            _pm(e["acc"]),
            _seeds(e["acc"]),
            _pm(e["val_acc"]),
        )
        for e in s["exits"]
    ]
    header = ("exit", "cumulative MACs", "of whole", "test acc (%)", "per seed", "val acc (%)")
    lines += md_table(header, rows)
    lines += [
        "",
        "### Against independently trained networks of increasing size (same family, same budget)",
        "",
        "Single-exit MSDNets of 1, 2 and 3 blocks (`SingleExitMSDNet`: the same layers up to one classifier, "
        "the reduction rule applied to their own depth), trained with `ClassificationModule` for the same "
        "epochs, optimizer and schedule. *Early-exit curve at the same MACs* = the seed-mean budgeted curve "
        "below, linearly interpolated at the network's MACs (— outside the curve's range).",
        "",
    ]
    rows = []
    for b in s["baselines"]:
        at = b["early_exit_acc_at_macs"]
        rows.append(
            (
                b["arm"],
                _m(b["macs"]),
                f"{b['params']:,}",
                _pm(b["acc"]),
                _seeds(b["acc"]),
                "—" if at is None else f"{100 * at:.2f}",
                "—" if b["delta"] is None else f"{100 * b['delta']:+.2f}",
            )
        )
    header = (
        "network",
        "MACs",
        "params",
        "test acc (%)",
        "per seed",
        "early-exit curve at same MACs (%)",
        "Δ (pts)",
    )
    lines += md_table(header, rows)
    lines += [
        "",
        "### Budgeted batch classification (a selection of the 40 budgets; all in the JSON)",
        "",
        "Budget p: the fractions leaving at each exit follow `q_k ∝ p^k` (MSDNet's sweep); thresholds on the "
        "max softmax fitted on the seed's 500 validation images (`budgeted_evaluation`), then applied to the "
        "test images. Average MACs = Σ_k (test fraction leaving at k) · C_k; mean ± std over seeds.",
        "",
    ]
    rows = []
    for c in s["curve"]:
        if not any(abs(float(c["p"]) - t) < 1e-9 for t in TABLE_BUDGETS):
            continue
        fractions = " / ".join(f"{f:.2f}" for f in c["exit_fractions"])
        rows.append(
            (
                f"{float(c['p']):g}",
                fractions,
                f"{c['avg_macs']['mean'] / 1e6:.2f}M ± {c['avg_macs']['std'] / 1e6:.2f}M",
                f"{c['avg_macs']['mean'] / whole:.2f}×",
                _pm(c["acc"]),
            )
        )
    lines += md_table(("p", "test exit fractions", "avg MACs", "of whole", "test acc (%)"), rows)
    op = s["operating"]
    lines += [
        "",
        f"### Operating point: ≤ {100 * TOL:.1f} points below the last exit",
        "",
        "Per seed, the budget with the fewest average MACs on validation among those whose validation "
        f"accuracy is at most {100 * TOL:.1f} points below the last exit's validation accuracy (chosen on "
        "validation, reported on test; 0.5 points are 2.5 of the 500 validation images, so the test loss can "
        "exceed it by noise). *Saved* = 1 − avg MACs / whole network's MACs (last exit only).",
        "",
    ]
    rows = []
    for c in s["operating_points"]:
        rows.append(
            (
                c["seed"],
                f"{float(c['p']):g}" + ("" if c["met_on_val"] else " (none met it: most accurate)"),
                _thr(c["thresholds"]),
                f"{100 * c['val_drop']:+.2f}",
                f"{100 * c['accuracy']:.2f}",
                f"{100 * c['test_drop']:+.2f}",
                " / ".join(f"{f:.2f}" for f in c["exit_fractions"]),
                _m(c["avg_macs"]),
                f"{100 * (1 - c['avg_macs'] / whole):.1f} %",
                f"{whole / c['avg_macs']:.2f}×",
            )
        )
    header = (
        "seed",
        "budget p",
        "thresholds θ_1, θ_2",
        "val loss (pts)",
        "test acc (%)",
        "test loss vs last exit (pts)",
        "test exit fractions",
        "avg MACs",
        "saved",
        "fewer MACs",
    )
    lines += md_table(header, rows)
    lines += [
        "",
        f"Mean over seeds: test loss {_pm(op['test_drop'])} points, MACs saved {_pm(op['saved_vs_last_only'], digits=1)} % "
        f"against the whole network (last exit only), {_pm(op['saved_vs_all_exits'], digits=1)} % against "
        "`model(x)` with every exit.",
    ]
    timing = part.get("timing")
    if timing:
        lines += [
            "",
            "### Wall-clock at batch 64, 1 thread (seed 0)",
            "",
            f"The seed-0 network at its operating point (θ = {_thr(timing['thresholds'])}) on the "
            f"{timing['batches']} full test batches of 64; a sample = one pass over them, reported per batch; "
            f"{timing['rounds']} rounds, variants interleaved (rotating order) after warm-up, eager PyTorch under "
            "`torch.inference_mode` unless compiled. *early exit* = `EarlyExitModule.early_exit_predict(x, θ)` "
            "(stage k runs only on the samples still present); *whole, last exit only* = `SingleExitMSDNet` of "
            "the same weights; *whole, every exit* = `model(x)`; *compiled* = `torch.compile(dynamic=False, "
            f"freezing=True)` of the last-exit-only network. On these batches: exit fractions "
            f"{' / '.join(f'{f:.3f}' for f in timing['exit_fractions'])}, average MACs {_m(timing['avg_macs'])} "
            f"({whole / timing['avg_macs']:.2f}× fewer than the whole network); early-exit predictions equal "
            f"those of the same thresholds applied to the full network's logits for {100 * timing['agreement']:.2f} "
            "% of the samples.",
            "",
        ]
        rows = [
            (
                k + (" ★" if k in (timing["best_full"], timing.get("best_ee")) else ""),
                _ms(q),
                "—" if k in EE_KINDS else _x(timing["speedup"][k]),
            )
            for k, q in timing["ms"].items()
        ]
        lines += md_table(
            (
                "variant (★ fastest whole network / early exit)",
                "ms per batch (p25–p75)",
                "eager early exit faster by",
            ),
            rows,
        )
        best = timing["speedup_vs_best"]
        lines += [
            "",
            f"Best against best (shared/BENCHMARKS.md): {timing.get('best_ee', EE_VARIANT)} against "
            f"{timing['best_full']}: **{_x(best)}** (goal ≥ {GOAL}×). *early exit, compiled stages* = "
            "`early_exit_inference(CompiledStages(model), x, θ)`: each stage compiled by inductor "
            "once with a dynamic batch dimension (`effdl_lightning.core.dynamic.CompiledStages`); *static buckets* = "
            f"`CompiledStages(model, buckets={BUCKETS}, dynamic=False, options={{'freezing': True}})`: the samples "
            "still present are padded with zero rows up to the next bucket, one static graph per (stage, bucket). "
            "*ONNX Runtime* (1 intra-op thread, `ORT_ENABLE_ALL`): the whole network exported by the dynamo "
            "exporter with a dynamic batch dimension; *early exit, ONNX Runtime stages* = "
            "`early_exit_inference(export_stages_onnx(model, x, dir), x, θ)` (`effdl_lightning.export`): one "
            "graph per stage with a dynamic batch dimension, samples that leave are not fed to the later graphs; "
            "both checked against eager PyTorch on every batch (same exits, logits within 1e-3).",
        ]
        if timing["notes"]:
            lines += ["", *(f"- left out: {k}: {v}" for k, v in timing["notes"].items())]
    return lines


def skipnet_markdown(part: dict[str, Any]) -> list[str]:
    s, meta = part["summary"], part["meta"]
    config = meta["config"]
    sup, rl = config["epochs"]
    lines = [
        "",
        "## (2) SkipNet: gated ResNet-20, skip reward α",
        "",
        _meta_line(meta),
        "",
        f"ResNet-20 (option-A shortcuts) at width ×{config['width']} (stage widths "
        f"{[max(1, round(w * config['width'])) for w in (16, 32, 64)]}). `SkipNetModule(alpha=α, "
        f"rl_start_epoch={sup})`: FFGate-II gates on the 7 shape-keeping blocks, {sup} supervised epochs (hard "
        f"gates, straight-through) then {rl} hybrid-RL epochs (sampled gates, CE + REINFORCE with skip reward "
        f"α); the ungated ResNet-20 trained {sup + rl} epochs with `ClassificationModule`; SGD lr {LR['skipnet']}, "
        "cosine over all epochs. *Open init* (rows without a suffix) = `gate_init='open'`: every gate starts open "
        "(w = 0, b = 2), the gated network starts as the plain one; *random init* = `gate_init='random'` (the "
        "default, as the reference code): PyTorch's default Linear init, gates start near ½ and some blocks are "
        "skipped from the first step. Rows with `s+r epochs` have a longer hybrid-RL phase (not timed). At test the gates are deterministic and a skipped block's branch is not computed "
        "for that sample. *Skip ratio* = fraction of (test sample, gated block) pairs skipped; *avg executed MACs* "
        "= always-on layers and gates + each gated branch × the fraction of samples running it (`test/avg_macs`), "
        "against the ungated network's MACs. Wall-clock: the seed-0 networks, eager, batch 64, 1 thread, the full "
        "test batches, interleaved; ratio = ungated median / gated median.",
        "",
    ]
    timing = part.get("timing") or {}
    rows = []
    for r in s["rows"]:
        ms = timing.get("ms", {}).get(r["arm"])
        speed = timing.get("speedup", {}).get(r["arm"])
        rows.append(
            (
                r["arm"],
                r["gates"],
                "—" if r["alpha"] is None else _pm(r["skip_ratio"], digits=1),
                _pm(r["acc"]),
                _seeds(r["acc"]),
                f"{r['avg_macs']['mean'] / 1e6:.2f}M ± {r['avg_macs']['std'] / 1e6:.2f}M",
                f"{r['macs_fraction']['mean']:.3f}×",
                "—" if ms is None else _ms(ms),
                "1.00×" if r["arm"] == UNGATED else ("—" if speed is None else _x(speed)),
            )
        )
    header = (
        "network",
        "gates",
        "skip ratio (%)",
        "test acc (%)",
        "per seed",
        "avg executed MACs",
        "of ungated",
        "b64 ms (p25–p75)",
        "faster than ungated",
    )
    lines += md_table(header, rows, align="lrrrlrrrr")
    gated = [r for r in s["rows"] if r["executed"]]
    if gated:
        names = list(gated[0]["executed"])
        lines += ["", "Fraction of test samples executing each gated block's branch (mean over seeds):", ""]
        table = [(n, *(f"{r['executed'][n]:.3f}" for r in gated)) for n in names]
        lines += md_table(("block", *(r["arm"] for r in gated)), table)
        if gated[0]["macs_all_open"] != gated[0]["macs_ungated"]:
            lines += [
                "",
                f"With every gate open a gated network costs {_m(gated[0]['macs_all_open'])} MACs (the gates "
                f"included) against {_m(gated[0]['macs_ungated'])} ungated.",
            ]
    return lines


def condconv_markdown(part: dict[str, Any]) -> list[str]:
    s, meta = part["summary"], part["meta"]
    timing = part.get("timing") or {}
    lines = [
        "",
        "## (3) CondConv against a static CNN at equal MACs",
        "",
        _meta_line(meta),
        "",
        f"VGG-small (3×3 conv + BN + ReLU, max-pool after each, global pooling + linear). *CondConv*: every conv "
        f"a `CondConv2d` with {EXPERTS} experts (`replace_convs_with_condconv_`; per-example kernel "
        "Σ_e σ(GAP(x)·R + b)_e · W_e, one grouped conv over the batch); MACs by `condconv_macs` = routing + "
        "kernel mixing + the conv. *static* = the same widths with plain convs; *static, equal MACs* = widths "
        "(c, 2c, 4c) with the MACs closest to CondConv's. "
        f"{meta['config']['epochs']} epochs each, SGD lr {LR['condconv']}, cosine. Wall-clock: seed-0 networks, "
        "eager, batch 64, 1 thread, interleaved; ratio = static-equal-MACs median / the network's median.",
        "",
    ]
    rows = []
    for r in s["rows"]:
        ms = timing.get("ms", {}).get(r["arm"])
        speed = timing.get("speedup", {}).get(r["arm"])
        rows.append(
            (
                r["arm"],
                "/".join(str(w) for w in r["widths"]),
                _m(r["macs"]),
                f"{r['params']:,}",
                _pm(r["acc"]),
                _seeds(r["acc"]),
                "—" if ms is None else _ms(ms),
                "1.00×" if r["arm"] == WIDE else ("—" if speed is None else _x(speed)),
            )
        )
    header = (
        "network",
        "widths",
        "MACs",
        "params",
        "test acc (%)",
        "per seed",
        "b64 ms (p25–p75)",
        "speed vs equal-MACs static",
    )
    lines += md_table(header, rows, align="llrrrlrr")
    return lines


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    ee = result.get("early_exit", {})
    if ee.get("summary"):
        s, op = ee["summary"], ee["summary"]["operating"]
        last = s["exits"][-1]["acc"]
        line = (
            f"- (1) MSDNet: last exit {_pm(last)} %; at the operating point (≤ {100 * TOL:.1f} points on validation) "
            f"test loss {_pm(op['test_drop'])} points with {_pm(op['saved_vs_last_only'], digits=1)} % fewer MACs "
            "than the whole network"
        )
        timing = ee.get("timing")
        if timing:
            best = timing["speedup_vs_best"]
            ok = " ✓" if best["ratio_of_medians"] >= GOAL else " ✗"
            line += (
                f"; wall-clock at batch 64, 1 thread (seed 0): the fastest early exit ({timing.get('best_ee', EE_VARIANT)}) "
                f"**{_x(best)}** faster than the fastest whole-network runtime ({timing['best_full']}) (goal ≥ "
                f"{GOAL}×{ok}); eager early exit {_x(timing['speedup'][WHOLE])} faster than eager last-exit-only"
            )
        lines.append(line + ".")
        deltas = [b for b in s["baselines"] if b["delta"] is not None]
        if deltas:
            parts = ", ".join(f"{b['arm']} {100 * b['delta']:+.2f}" for b in deltas)
            lines.append(
                f"- (1) early-exit curve − independently trained network at the same MACs (points): {parts}."
            )
    sk = result.get("skipnet", {})
    if sk.get("summary"):
        speed = sk.get("timing", {}).get("speedup", {})
        parts = []
        for r in sk["summary"]["rows"]:
            text = f"{r['arm']}: acc {_pm(r['acc'])} %"
            if r["alpha"] is not None:
                text += f", skip {_pm(r['skip_ratio'], digits=1)} %, {r['macs_fraction']['mean']:.2f}× MACs"
                if r["arm"] in speed:
                    text += f", {speed[r['arm']]['ratio_of_medians']:.2f}× wall-clock"
            parts.append(text)
        lines.append("- (2) " + "; ".join(parts) + ".")
    cc = result.get("condconv", {})
    if cc.get("summary"):
        parts = [f"{r['arm']} {_m(r['macs'])} MACs: {_pm(r['acc'])} %" for r in cc["summary"]["rows"]]
        lines.append("- (3) " + "; ".join(parts) + ".")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    env = result["meta"]["environment"]
    lines = [
        "# Dynamic inference: early exits (MSDNet), SkipNet gates, CondConv",
        "",
        f"Torch {env['torch']}, lightning {env['lightning']}, Python {env['python']} on {env['machine']}, "
        f"{env['cpus']} CPUs. Method: module docstring of `benchmarks/dynamic_inference.py`."
        + (
            " **Quick smoke run: a few batches of training, numbers meaningless.**"
            if result["meta"]["quick"]
            else ""
        ),
        "",
        "## Summary",
        "",
        *summary_lines(result),
        "",
        "## Definitions",
        "",
        "- "
        + DEFINITIONS["macs"]
        + " Counted at batch 1 by `effdl_lightning.measure.profile` (conv and linear; "
        "CondConv by its registered rule) or, per exit, by `EarlyExitModule.exit_macs`; *average MACs* of a "
        "dynamic network = the mean over test samples of the MACs actually computed for each.",
        "- **Accuracy** = top-1 on the 1,000 test images of the seed's split of the MNIST subset, in %.",
        "- " + DEFINITIONS["timing"] + " Times are eager PyTorch on 1 thread unless a row says otherwise.",
        "- " + DEFINITIONS["seeds"],
        "- **Params** = all parameters (norm layers included).",
    ]
    for part, fn in (
        ("early_exit", early_exit_markdown),
        ("skipnet", skipnet_markdown),
        ("condconv", condconv_markdown),
    ):
        if result.get(part, {}).get("summary"):
            lines += fn(result[part])
    return "\n".join(lines) + "\n"


# -- figure ---------------------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    """(a) early-exit curves, (b) SkipNet and (c) CondConv accuracy vs MACs, (d) wall-clock ratios."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(22, 7), layout="constrained")
    axes = fig.subplots(1, 4)
    ee = result.get("early_exit", {}).get("summary")
    ax = axes[0]
    if ee:
        curve = sorted(ee["curve"], key=lambda c: c["avg_macs"]["mean"])
        ax.errorbar(
            [c["avg_macs"]["mean"] / 1e6 for c in curve],
            [100 * c["acc"]["mean"] for c in curve],
            xerr=[c["avg_macs"]["std"] / 1e6 for c in curve],
            yerr=[100 * c["acc"]["std"] for c in curve],
            fmt="-",
            color="C0",
            lw=1,
            alpha=0.8,
            label="MSDNet budgeted batch (40 budgets)",
        )
        ax.errorbar(
            [e["macs"] / 1e6 for e in ee["exits"]],
            [100 * e["acc"]["mean"] for e in ee["exits"]],
            yerr=[100 * e["acc"]["std"] for e in ee["exits"]],
            fmt="s--",
            color="C1",
            capsize=3,
            label="MSDNet anytime (each exit)",
        )
        ax.errorbar(
            [b["macs"] / 1e6 for b in ee["baselines"]],
            [100 * b["acc"]["mean"] for b in ee["baselines"]],
            yerr=[100 * b["acc"]["std"] for b in ee["baselines"]],
            fmt="o:",
            color="C2",
            capsize=3,
            label="single-exit MSDNet-1/2/3 (independent)",
        )
        op = ee["operating"]
        ax.errorbar(
            op["avg_macs"]["mean"] / 1e6,
            100 * op["accuracy"]["mean"],
            xerr=op["avg_macs"]["std"] / 1e6,
            yerr=100 * op["accuracy"]["std"],
            fmt="*",
            ms=14,
            color="C3",
            label=f"operating point (≤{100 * TOL:.1f} pts on val)",
        )
        ax.axvline(ee["macs_last_only"] / 1e6, color="gray", lw=0.8, ls="--", label="whole network")
        ax.set(xlabel="average MACs per sample (M)", ylabel="test accuracy (%), mean ± std over seeds")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax.set_title("(a) early exits (MSDNet)")
    for ax, key, title in (
        (axes[1], "skipnet", "(b) SkipNet"),
        (axes[2], "condconv", "(c) CondConv vs static"),
    ):
        summary = result.get(key, {}).get("summary")
        ax.set_title(title)
        if not summary:
            continue
        for i, r in enumerate(summary["rows"]):
            x = r["avg_macs"]["mean"] if key == "skipnet" else r["macs"]
            xerr = r["avg_macs"]["std"] / 1e6 if key == "skipnet" else 0
            label = r["arm"] + (f" (skip {100 * r['skip_ratio']['mean']:.0f} %)" if r.get("alpha") else "")
            ax.errorbar(
                x / 1e6,
                100 * r["acc"]["mean"],
                xerr=xerr,
                yerr=100 * r["acc"]["std"],
                fmt="os^Dv"[i % 5],
                color=f"C{i}",
                capsize=3,
                label=label,
            )
        ax.set(
            xlabel="average executed MACs (M)" if key == "skipnet" else "MACs (M)", ylabel="test accuracy (%)"
        )
        if key == "skipnet":  # many arms: the legend beside the axes, not over the points
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        else:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[3]
    bars: list[tuple[str, float, float, float]] = []
    timing = result.get("early_exit", {}).get("timing")
    if timing:
        for k, s in timing["speedup"].items():
            bars.append((f"EE vs {k}", s["ratio_of_medians"], s["paired_p25"], s["paired_p75"]))
        if timing.get("best_ee") and timing["best_ee"] != EE_VARIANT:
            s = timing["speedup_vs_best"]
            label = "EE, fastest vs fastest whole (see md)"
            bars.append((label, s["ratio_of_medians"], s["paired_p25"], s["paired_p75"]))
    for key in ("skipnet", "condconv"):
        t = result.get(key, {}).get("timing")
        for k, s in (t or {}).get("speedup", {}).items():
            label = f"{k} vs ungated" if key == "skipnet" else f"{k} vs equal-MACs static"
            bars.append((label, s["ratio_of_medians"], s["paired_p25"], s["paired_p75"]))
    if bars:
        ys = range(len(bars))
        values = [b[1] for b in bars]
        err = [[max(0.0, b[1] - b[2]) for b in bars], [max(0.0, b[3] - b[1]) for b in bars]]
        ax.barh(list(ys), values, xerr=err, color=["C0" if b[0].startswith("EE") else "C7" for b in bars])
        ax.set_yticks(list(ys), [b[0] for b in bars], fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(GOAL, color="red", lw=0.8, ls="--", label=f"early-exit goal {GOAL}×")
        ax.set(xlabel="wall-clock ratio (> 1: faster), batch 64, 1 thread")
        ax.legend(fontsize=7)
    ax.set_title("(d) measured wall-clock, seed 0")
    fig.savefig(str(path), dpi=120)


# -- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a ~1-minute smoke run (dynamic_inference_quick.*)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training runs")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs recorded in *_runs.jsonl")
    parser.add_argument("--ee-epochs", type=int, default=6, help="epochs of every early-exit-part network")
    parser.add_argument(
        "--skipnet-epochs",
        type=int,
        nargs=2,
        default=[3, 3],
        metavar=("SUPERVISED", "RL"),
        help="SkipNet phases",
    )
    parser.add_argument("--skipnet-width", type=float, default=0.5, help="ResNet-20 width multiplier")
    parser.add_argument(
        "--skipnet-long-rl",
        type=int,
        default=12,
        help="hybrid-RL epochs of the longer-budget arms (ungated and random-init α ∈ {0.1, 0.001}); 0 = none",
    )
    parser.add_argument("--condconv-epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds per variant")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not time torch.compile of the whole MSDNet"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "effdl_dynamic_inference",
        help="where the timed seed-0 networks are kept",
    )
    args = parser.parse_args(argv or [])
    argv_used = sys.argv[1:] if argv is None else argv
    quiet()
    threads = torch.get_num_threads()
    start, load = time.perf_counter(), os.getloadavg()[0]
    quick = args.quick
    parts = PARTS if args.part == "all" else (args.part,)
    seeds = [0] if quick else list(args.seeds)
    workers = 1 if quick else args.workers
    stem = output_stem(NAME, quick)
    json_path = args.out / f"{stem}.json"
    previous = json.loads(json_path.read_text()) if args.part != "all" and json_path.exists() else {}
    workdir = args.workdir / ("quick" if quick else "full")
    jobs = make_jobs(parts, seeds, args, quick, workdir)
    log = Path(args.out) / f"{stem}_runs.jsonl"
    done = load_rows(log, args.fresh or quick)  # a quick run never resumes
    # a finished run whose timed network is gone is run again
    missing = {digest(j) for j in jobs if j["model_path"] and not Path(j["model_path"]).exists()}
    done = [
        r for r in done if not ({"part", "arm", "seed", "config", "quick"} <= set(r) and digest(r) in missing)
    ]
    key = ["part", "arm", "seed", "config", "quick"]
    rows = run_jobs(run_one, jobs, key, log, done, workers=workers)
    rows = [r | {"model_path": j["model_path"]} for r, j in zip(rows, jobs, strict=True)]
    torch.set_num_threads(threads)

    dm = MNISTSubsetDataModule(batch_size=BATCH, seed=seeds[0], augment=False)
    dm.setup()
    batches = [x for x, _ in dm.test_dataloader() if len(x) == BATCH][: 2 if quick else None]
    warmup, rounds = (1, 3) if quick else (2, args.rounds)
    timed = {part: [r for r in rows if r["part"] == part and r.get("model_path")] for part in parts}
    result: dict[str, Any] = {"meta": {}} | {p: previous.get(p, {}) for p in PARTS}
    result["runs"] = [r for r in previous.get("runs", []) if r["part"] not in parts] + rows
    for part in parts:
        mine = [r for r in rows if r["part"] == part]
        section: dict[str, Any] = {"summary": SUMMARIES[part](mine)}
        print(f"  timing {part} ...", flush=True)
        if part == "early_exit":
            section["timing"] = early_exit_timing(
                timed[part][0], batches, warmup, rounds, not (quick or args.no_compile)
            )
        elif part == "skipnet":
            section["timing"] = models_timing(timed[part], UNGATED, batches, warmup, rounds)
        else:
            section["timing"] = models_timing(timed[part], WIDE, batches, warmup, rounds)
        config = {k: v for k, v in mine[0]["config"].items() if k in ("epochs", "width", "limit")}
        section["meta"] = {
            "command": command_line(NAME, argv_used),
            "seeds": seeds,
            "config": config,
            "workers": workers,
            "runs": len(mine),
            "train_s_total": sum(r["train_s"] for r in mine),
            "steps_total": sum(r["steps"] for r in mine),
            "wall_s": time.perf_counter() - start,
            "load_avg_start": load,
            "load_avg_end": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        }
        result[part] = section
    torch.set_num_threads(threads)
    result["meta"] = {
        "command": command_line(NAME, argv_used),
        "environment": environment(1),
        "quick": quick,
        "seeds": seeds,
        "parts": list(parts),
        "wall_s": time.perf_counter() - start,
        "load_avg": load,
        "stem": stem,
    }
    paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)
    for line in summary_lines(result):
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
