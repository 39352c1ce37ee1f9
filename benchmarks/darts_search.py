"""DARTS (first order) against random search at the same search budget, both cells retrained from scratch.

Data: scikit-learn's 8×8 digits (1,797 real images, offline), stratified per seed into 1,078 train / 270 val /
449 test. The 28×28 MNIST subset was measured first and rejected for a CPU budget: one first-order DARTS step of
the same supernet costs about 4× more per image there (28² maps; depthwise-conv weight gradients dominate) and
the training set is 3× larger, so one search epoch costs ~12× more.

Per seed (the seed sets the split, the shuffling, the weights and the random cells):

* **DARTS**: ``DartsSearchModule`` (first order) on a ``DartsSearchNetwork`` (C=8, 5 cells, 3 nodes, the paper's 8
  operations) for ``--search-epochs`` epochs; every batch of 64 is split 32 / 32 between the weight step (SGD,
  cosine) and the architecture step (Adam). The genotype is derived from the final α.
* **Random search, same budget**: DARTS makes ``S`` steps, each a forward-backward pass of 32 images for the
  weights and one for α, ``2S`` passes in all. Random search draws ``--candidates`` K cells uniformly from the same
  discrete space (``random_genotype``), trains each (C=8, 5 cells) for ``2S / K`` steps of 32 images on the
  training split, and keeps the best by accuracy on the validation split. Equal budget = equal number of
  forward-backward passes of the same batch size; the supernet's passes cost more, so random search spends less
  wall time (both wall times are reported).
* **Retrain**: each chosen cell is trained from scratch with the same settings (``DartsNetwork`` C=8, 5 cells,
  ``--retrain-epochs`` epochs, batch 64, SGD + Nesterov, cosine) and tested on the test split.

Run: ``python -m benchmarks --only darts_search`` (2 single-threaded runs in parallel, ``--workers``);
``--quick`` (seconds) writes ``darts_search_quick.*``; finished (arm, seed) runs are kept in
``darts_search_runs.jsonl`` and not rerun (``--fresh`` reruns them); ``--part report`` rewrites the Markdown and
PNG from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

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
    quiet_trainer,
    seed_all,
    write_results,
)
from benchmarks._quant_common import load_rows, run_jobs
from effdl_lightning.core.nas import DARTS_OPS, DartsSearchNetwork, Genotype, random_genotype
from effdl_lightning.data import DigitsDataModule
from effdl_lightning.measure import profile
from effdl_lightning.models import DartsNetwork
from effdl_lightning.modules import ClassificationModule, DartsSearchModule

NAME = "darts_search"
SHAPE = (1, 8, 8)
ARMS = ("darts", "random")
#: the network of the search, of the random candidates and of the retraining
NET: dict[str, Any] = {"C": 8, "layers": 5, "nodes": 3}
SPLIT = {"val_fraction": 0.15, "test_fraction": 0.25}
#: a DARTS step = a weight pass + an architecture pass of HALF images each
BATCH = 64
HALF = BATCH // 2
WEIGHT_LR = 0.05
#: Adam lr of α: 10× the paper's 3e-4, because this search makes ~1% of the paper's steps (255 vs 19,550)
ARCH_LR = 3e-3
#: the paper's search: 50 epochs of 25,000 CIFAR-10 images in batches of 64 (§3.1.1)
PAPER_STEPS = 50 * math.ceil(25_000 / 64)
DEFAULTS = {"search_epochs": 15, "candidates": 8, "retrain_epochs": 20}
QUICK = {"search_epochs": 1, "candidates": 2, "retrain_epochs": 1, "limit_batches": 3}


def datamodule(seed: int, batch_size: int) -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=batch_size, seed=seed, **SPLIT)
    dm.setup()
    return dm


def sgd(lr: float = WEIGHT_LR) -> Any:
    return partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=3e-4)


class _StepTimer(Callback):
    """Wall seconds of every training step (the per-step costs behind ``--quick``'s estimate of a full run)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan


class _AlphaHistory(Callback):
    """Mean softmax(α) per operation over the edges of the normal and the reduction cell, after each epoch."""

    def __init__(self) -> None:
        self.normal: list[list[float]] = []
        self.reduce: list[list[float]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        w_normal, w_reduce = pl_module.model.arch_weights()  # type: ignore[operator]
        self.normal.append(w_normal.mean(0).tolist())
        self.reduce.append(w_reduce.mean(0).tolist())


def accuracy(module: LightningModule, trainer: Trainer, loader: Any) -> float:
    (result,) = trainer.validate(module, loader, verbose=False)
    return float(result["val/acc"])


def train_cell(
    genotype: Genotype, seed: int, steps: int, batch_size: int, val: bool
) -> tuple[DartsNetwork, float, float, float]:
    """Train ``DartsNetwork(genotype)`` from scratch for ``steps`` steps (cosine over them); return the network,
    the validation (``val``) or test accuracy, the seconds and the median seconds per step."""
    start = time.perf_counter()
    seed_all(seed)
    dm = datamodule(seed, batch_size)
    net = DartsNetwork(genotype, C=NET["C"], num_classes=10, layers=NET["layers"], in_channels=SHAPE[0])
    module = ClassificationModule(
        net,
        num_classes=10,
        optimizer=sgd(),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(1, steps)),
        scheduler_interval="step",
        input_shape=SHAPE,
    )
    timer = _StepTimer()
    trainer = quiet_trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    loader = dm.val_dataloader() if val else dm.test_dataloader()
    acc = accuracy(module, quiet_trainer(), loader)
    return net, acc, time.perf_counter() - start, timer.median


def search_steps(search_epochs: int, limit_batches: int | None) -> int:
    """``S``: the DARTS steps of a search (batches of 64 per epoch × epochs)."""
    per_epoch = limit_batches or math.ceil(datamodule(0, BATCH).train_dataset.__len__() / BATCH)  # type: ignore[union-attr]
    return search_epochs * per_epoch


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (arm, seed): search, then retrain the chosen cell; one torch thread."""
    torch.set_num_threads(1)
    quiet()
    seed, arm, limit = job["seed"], job["arm"], job.get("limit_batches")
    steps = search_steps(job["search_epochs"], limit)
    start = time.perf_counter()
    row: dict[str, Any] = dict(job)
    if arm == "darts":
        seed_all(seed)
        dm = datamodule(seed, BATCH)
        net = DartsSearchNetwork(num_classes=10, in_channels=SHAPE[0], ops=DARTS_OPS, **NET)
        module = DartsSearchModule(
            net,
            num_classes=10,
            order="first",
            arch_lr=ARCH_LR,
            optimizer=partial(torch.optim.SGD, lr=WEIGHT_LR, momentum=0.9, weight_decay=3e-4),
            scheduler=partial(
                torch.optim.lr_scheduler.CosineAnnealingLR, T_max=job["search_epochs"], eta_min=1e-3
            ),
            genotype_path=Path(job["workdir"]) / f"darts_seed{seed}.json",
            input_shape=SHAPE,
        )
        history, timer = _AlphaHistory(), _StepTimer()
        trainer = quiet_trainer(
            max_epochs=job["search_epochs"],
            limit_train_batches=limit,
            limit_val_batches=0,
            callbacks=[history, timer],
        )
        trainer.fit(module, datamodule=dm)
        genotype = module.genotype
        row["search"] = {
            "steps": steps,
            "train_batches": 2 * steps,
            "val_acc_supernet": accuracy(module, quiet_trainer(), dm.val_dataloader()),
            "step_s": timer.median,
            "alpha_normal": history.normal,
            "alpha_reduce": history.reduce,
        }
    else:
        k = job["candidates"]
        each = max(1, 2 * steps // k)
        rng = random.Random(seed)
        candidates = []
        for i in range(k):
            g = random_genotype(rng, NET["nodes"], DARTS_OPS)
            _, val_acc, seconds, step_s = train_cell(g, seed * 1000 + i, each, HALF, val=True)
            candidates.append(
                {"genotype": g.to_dict(), "val_acc": val_acc, "seconds": seconds, "step_s": step_s}
            )
        best = max(range(k), key=lambda i: candidates[i]["val_acc"])  # ties: the first drawn
        genotype = Genotype.from_dict(candidates[best]["genotype"])
        row["search"] = {
            "steps_per_candidate": each,
            "train_batches": each * k,
            "step_s": statistics.median(c["step_s"] for c in candidates),
            "candidates": candidates,
        }
    row["search"]["wall_s"] = time.perf_counter() - start
    row["genotype"] = genotype.to_dict()
    retrain_steps = job["retrain_epochs"] * (
        limit or math.ceil(len(datamodule(seed, BATCH).train_dataset) / BATCH)
    )  # type: ignore[arg-type]
    net, test_acc, seconds, step_s = train_cell(genotype, seed, retrain_steps, BATCH, val=False)
    prof = profile(net, SHAPE, latency=False)
    row["retrain"] = {"steps": retrain_steps, "test_acc": test_acc, "wall_s": seconds, "step_s": step_s,
                      "params": prof.params, "macs": prof.macs}  # fmt: skip
    row["test_acc"] = test_acc
    row["train_s"] = time.perf_counter() - start
    return row


def estimate_full_run(rows: list[dict[str, Any]], workers: int = 2, seeds: int = 3) -> dict[str, Any]:
    """Project a full run (:data:`DEFAULTS`) from a quick run's per-step times and per-run overheads.

    Each job costs its steps × the measured median step time plus the quick run's remaining time (setup,
    evaluation; for random search scaled by the number of candidates); the jobs (DARTS first) are then
    scheduled greedily on ``workers`` processes, as :func:`run_jobs` does.
    """
    per_epoch = math.ceil(len(datamodule(0, BATCH).train_dataset) / BATCH)  # type: ignore[arg-type]
    full_s, full_r = DEFAULTS["search_epochs"] * per_epoch, DEFAULTS["retrain_epochs"] * per_epoch
    cost: dict[str, float] = {}
    for row in rows:
        search, retrain = row["search"], row["retrain"]
        q_r = retrain["steps"] * retrain["step_s"]
        if row["arm"] == "darts":
            q_s = search["steps"] * search["step_s"]
            overhead = max(0.0, row["train_s"] - q_s - q_r)
            cost["darts"] = full_s * search["step_s"] + full_r * retrain["step_s"] + overhead
        else:
            q_s = search["train_batches"] * search["step_s"]
            overhead = max(0.0, row["train_s"] - q_s - q_r) * DEFAULTS["candidates"] / row["candidates"]
            cost["random"] = 2 * full_s * search["step_s"] + full_r * retrain["step_s"] + overhead
    finish = [0.0] * workers
    for arm in (a for a in ARMS for _ in range(seeds)):
        i = finish.index(min(finish))
        finish[i] += cost.get(arm, 0.0)
    return {
        "job_s": cost,
        "workers": workers,
        "seeds": seeds,
        "wall_min": max(finish) / 60,
        "defaults": DEFAULTS,
    }


# -- report ---------------------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ARMS:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        if not mine:
            continue
        acc = [r["retrain"]["test_acc"] for r in mine]
        mean, std = mean_std(acc)
        out[arm] = {
            "seeds": [r["seed"] for r in mine],
            "test_acc": acc,
            "acc_mean": mean,
            "acc_std": std,
            "params": mean_std([r["retrain"]["params"] for r in mine]),
            "macs": mean_std([r["retrain"]["macs"] for r in mine]),
            "search_s": mean_std([r["search"]["wall_s"] for r in mine]),
            "train_batches": mine[0]["search"]["train_batches"],
        }
    if set(out) == set(ARMS):
        d, r = out["darts"], out["random"]
        pairs = list(zip(d["test_acc"], r["test_acc"], strict=True))
        out["verdict"] = {
            "darts_ge_random_mean": d["acc_mean"] >= r["acc_mean"],
            "darts_ge_random_seeds": sum(a >= b for a, b in pairs),
            "seeds": len(pairs),
        }
    return out


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _cell(edges: list[list[Any]]) -> str:
    return " · ".join(f"{op}←{src}" for op, src in edges)


def to_markdown(result: dict[str, Any]) -> str:
    meta, s = result["meta"], result["summary"]
    env = meta["environment"]
    b = meta["budget"]
    lines = [
        "# DARTS (first order) vs random search at the same budget, cells retrained from scratch",
        "",
        f"Reproduce: `{meta['command']}`. Torch {env['torch']}, lightning {env['lightning']}, Python "
        f"{env['python']} on {env['machine']}, {env['cpus']} CPUs; 1 torch thread per run, {meta['workers']} runs "
        f"in parallel; {meta['train_s_total'] / 60:.1f} min of runs summed, invocation {meta['wall_s']:.0f} s; "
        f"load average at start: {meta['uptime_start']}; at end: {meta['uptime_end']} (the machine is shared: "
        "wall times grow with the load).",
        "",
        "## Definitions",
        "",
        "- " + DEFINITIONS["macs"] + " Here at 1×8×8, batch 1, of the retrained network.",
        "- " + DEFINITIONS["seeds"],
        "- **Search budget**: forward-backward passes of 32 images. DARTS: S steps × (1 weight + 1 architecture "
        "pass); random search: K candidates × 2S/K steps. **Search s**: wall time of the search (supernet, or "
        "all candidates), without the retraining.",
        "",
        "## Setup",
        "",
        f"Data: sklearn digits 8×8, per-seed stratified split 1,078 train / 270 val / 449 test; seeds {meta['seeds']}. "
        f"Network everywhere: C={NET['C']}, {NET['layers']} cells (reductions at cells 1 and 3), {NET['nodes']} "
        f"nodes per cell, the paper's 8 operations. DARTS: {b['search_epochs']} epochs = {b['search_steps']} steps "
        f"of 32 + 32 images, SGD(lr {WEIGHT_LR}, momentum 0.9, wd 3e-4, cosine to 1e-3), Adam on α (lr {ARCH_LR}, "
        f"betas (0.5, 0.999), wd 1e-3), first order. Random search: {b['candidates']} cells, "
        f"{b['steps_per_candidate']} steps of 32 images each, SGD + Nesterov (lr {WEIGHT_LR}, cosine), best "
        f"validation accuracy wins. Retraining (both arms): {b['retrain_epochs']} epochs of batch 64, SGD + "
        f"Nesterov (lr {WEIGHT_LR}, wd 3e-4), cosine; test accuracy on the 449 test images.",
        "",
        "## Results",
        "",
    ]
    rows = []
    for arm in ARMS:
        if arm not in s:
            continue
        a = s[arm]
        rows.append(
            (
                {"darts": "DARTS (1st order)", "random": "random search"}[arm],
                _pct(a["acc_mean"], a["acc_std"]),
                ", ".join(f"{100 * x:.2f}" for x in a["test_acc"]),
                f"{a['params'][0] / 1e3:.1f}k",
                f"{a['macs'][0] / 1e6:.2f}M",
                f"{a['search_s'][0]:.0f} ± {a['search_s'][1]:.0f}",
                a["train_batches"],
            )
        )
    header = ("arm", "retrained test acc (%)", "per seed", "params", "MACs", "search s", "search passes")
    lines += md_table(header, rows, align="lrlrrrr")
    v = s.get("verdict")
    if v:
        lines += [
            "",
            f"**DARTS ≥ random search (mean retrained test accuracy): {'yes' if v['darts_ge_random_mean'] else 'no'}**"
            f"; per seed DARTS ≥ random in {v['darts_ge_random_seeds']} of {v['seeds']}.",
        ]
    est = meta.get("estimate")
    if est:
        lines += [
            "",
            f"Projected full run ({est['defaults']['search_epochs']} search epochs, {est['defaults']['candidates']} "
            f"candidates, {est['defaults']['retrain_epochs']} retraining epochs, {est['seeds']} seeds, "
            f"{est['workers']} workers) from this "
            f"run's step times at its load: about {est['wall_min']:.0f} min (DARTS run "
            f"{est['job_s'].get('darts', 0) / 60:.1f} min, random-search run {est['job_s'].get('random', 0) / 60:.1f}"
            " min each).",
        ]
    lines += ["", "## Cells chosen (normal · reduce; op←input state, states 0-1 are the cell inputs)", ""]
    for r in sorted(result["runs"], key=lambda r: (r["arm"], r["seed"])):
        g = r["genotype"]
        lines.append(
            f"- {r['arm']} seed {r['seed']}: normal {_cell(g['normal'])}; reduce {_cell(g['reduce'])}"
        )
    lines += ["", *what_it_shows(result)]
    return "\n".join(lines) + "\n"


def what_it_shows(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    if "verdict" not in s:
        return []
    d, r = s["darts"], s["random"]
    steps = result["meta"]["budget"]["search_steps"]
    diff = 100 * (d["acc_mean"] - r["acc_mean"])
    noise = 100 * max(d["acc_std"], r["acc_std"])
    speed = d["search_s"][0] / max(r["search_s"][0], 1e-9)
    ops = [o for o in DARTS_OPS]
    darts_ops = [op for run in result["runs"] if run["arm"] == "darts" for op, _ in run["genotype"]["normal"]]
    common = max(set(darts_ops), key=darts_ops.count) if darts_ops else "-"
    return [
        f"What this shows: at an equal number of training passes, the DARTS cells retrain to "
        f"{100 * d['acc_mean']:.2f} % and the random-search cells to {100 * r['acc_mean']:.2f} % "
        f"(difference {diff:+.2f} points; the larger seed std is {noise:.2f} points, one test image is 0.22 points). "
        f"The DARTS search took {speed:.1f}× the random search's wall time: the supernet runs all "
        f"{len(ops) - 1} non-zero operations on every edge. The most frequent operation in the DARTS normal "
        f"cells is `{common}`.",
        "",
        "What it does not show: behaviour at the paper's scale (CIFAR-10, 50 search epochs, a 20-cell retraining "
        "network); on 8×8 digits most cells retrain to similar accuracy, so differences of a few test images "
        f"are within seed noise; the search makes {100 * steps / PAPER_STEPS:.2g} % of the paper's steps, hence "
        "the 10× architecture learning rate; an equal-wall-time budget would give random search several times "
        "more training.",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """Retrained accuracy per seed and arm (left); mean softmax(α) per operation over the epochs (seed 0)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    s = result["summary"]
    for i, arm in enumerate(a for a in ARMS if a in s):
        a = s[arm]
        xs = [i + 0.08 * (j - 1) for j in range(len(a["test_acc"]))]
        ax.scatter(xs, [100 * x for x in a["test_acc"]], color=f"C{i}", label=f"{arm} (per seed)")
        ax.errorbar(
            [i + 0.3], [100 * a["acc_mean"]], yerr=[100 * a["acc_std"]], fmt="s", color=f"C{i}", capsize=4
        )
    ax.set_xticks(range(len(ARMS)), list(ARMS))
    ax.set(ylabel="retrained test accuracy (%)", title="retrained cells (squares: mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    darts_runs = sorted((r for r in result["runs"] if r["arm"] == "darts"), key=lambda r: r["seed"])
    for ax, key, title in ((axes[1], "alpha_normal", "normal"), (axes[2], "alpha_reduce", "reduction")):
        if not darts_runs or not darts_runs[0]["search"][key]:
            ax.set_axis_off()
            continue
        hist = darts_runs[0]["search"][key]
        epochs = list(range(1, len(hist) + 1))
        for k, op in enumerate(DARTS_OPS):
            ax.plot(epochs, [h[k] for h in hist], marker="o", ms=3, label=op)
        ax.axhline(1 / len(DARTS_OPS), color="gray", lw=0.8, ls="--")
        ax.set(
            xlabel="search epoch",
            ylabel="mean softmax(α) over edges",
            title=f"DARTS seed {darts_runs[0]['seed']}: {title} cell",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)


def uptime() -> str:
    load = os.getloadavg()
    return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (darts_search_quick.*)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=DEFAULTS["search_epochs"])
    parser.add_argument(
        "--candidates", type=int, default=DEFAULTS["candidates"], help="random-search cells K"
    )
    parser.add_argument("--retrain-epochs", type=int, default=DEFAULTS["retrain_epochs"])
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded runs")
    parser.add_argument(
        "--fresh", action="store_true", help="ignore the runs recorded in darts_search_runs.jsonl"
    )
    parser.add_argument(
        "--part", choices=("all", "report"), default="all", help="report: rewrite MD/PNG from JSON"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet()
    quick = args.quick
    stem = output_stem(NAME, quick)
    out = Path(args.out)
    if args.part == "report":
        path = out / f"{stem}.json"
        if not path.exists():
            parser.error(f"--part report needs {path}")
        result = json.loads(path.read_text())
        paths = write_results(out, stem, result, to_markdown(result), partial(plot, result))
        print("wrote", ", ".join(str(p) for p in paths), flush=True)
        return
    start, load_start = time.perf_counter(), uptime()
    budget = (
        dict(QUICK)
        if quick
        else {
            "search_epochs": args.search_epochs,
            "candidates": args.candidates,
            "retrain_epochs": args.retrain_epochs,
            "limit_batches": None,
        }
    )
    seeds = [0] if quick else list(args.seeds)
    workers = 1 if quick else args.workers
    workdir = out / f"{stem}_genotypes"
    workdir.mkdir(parents=True, exist_ok=True)
    # the DARTS runs first: they are the longest, so the workers stay busy
    jobs = [{"arm": arm, "seed": seed, **budget, "workdir": str(workdir)} for arm in ARMS for seed in seeds]
    log = out / f"{stem}_runs.jsonl"
    done = load_rows(log, args.fresh or quick)  # a quick run never resumes
    threads = torch.get_num_threads()
    rows = run_jobs(
        run_one, jobs, ("arm", "seed", "search_epochs", "candidates", "retrain_epochs"), log, done, workers
    )
    torch.set_num_threads(threads)
    steps = search_steps(budget["search_epochs"], budget["limit_batches"])
    result: dict[str, Any] = {
        "meta": {
            "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
            "stem": stem,
            "quick": quick,
            "seeds": seeds,
            "workers": workers,
            "environment": environment(threads=1),
            "budget": budget
            | {"search_steps": steps, "steps_per_candidate": max(1, 2 * steps // budget["candidates"])},
            "net": NET,
            "uptime_start": load_start,
            "uptime_end": uptime(),
            "wall_s": time.perf_counter() - start,
            "train_s_total": sum(r["train_s"] for r in rows),
        },
        "summary": summarize(rows),
        "runs": rows,
    }
    if quick:
        result["meta"]["estimate"] = estimate_full_run(rows, workers=args.workers, seeds=len(args.seeds))
        print(f"projected full run: about {result['meta']['estimate']['wall_min']:.0f} min", flush=True)
    paths = write_results(out, stem, result, to_markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)


if __name__ == "__main__":
    main()
