"""Platform-aware search (issue 10, part 2): REINFORCE controller vs random search at equal budget, MnasNet reward.

Space: ``model=mnas_space`` (stem → 4 MBConv stages → head, 1×28×28 MNIST), per stage kernel {3, 5}, expansion
{1, 3, 6}, SE {no, yes}, layers {1, 2, 3} (36⁴ ≈ 1.7M architectures). Latency: a table of every block
configuration measured on this machine (eager PyTorch, batch 1, 1 thread, median of 30 after 10), a candidate's
latency the sum over its blocks. Reward (arXiv 1807.11626): ``ACC · (LAT/T)^w``, soft ``w = −0.07``; hard
``w = 0`` below ``T`` and ``−1`` above; ``T = --fraction ×`` the table latency of the MobileNetV2-style reference
(every stage 3×3, expansion 6, no SE, 2 layers). Candidates: trained ``--steps`` batches of 32 (Adam 0.02, cosine
to 0, seed from the search seed and the architecture) on the MNIST subset's 3,500 training images of the seed's
split, scored by accuracy on its 500 validation images (the *proxy* accuracy).

Per seed (3 seeds) three searches of ``--candidates`` candidates each: the controller with the soft reward, the
controller with the hard reward, and random search; random search does not depend on the reward, so its one run
is scored with both (its best under each reward is its choice). Afterwards every evaluated architecture's
whole-network latency is *measured* (same settings, ``--rounds`` round-robin rounds, median), which gives the
Pareto fronts (proxy accuracy vs measured latency) and the table's error; the chosen (best-reward) model of each
(method, reward, seed) is retrained for ``--retrain-epochs`` epochs and tested on the 1,000 test images.

Run: ``python -m benchmarks --only platform_search`` (``--workers 2`` single-threaded searches in parallel).
Estimated ≈ 13–15 minutes on 2 quiet cores, not yet measured: 9 searches × 30 candidates at ≈ 4 CPU-s each
(a 50-step candidate took 3.0–6.8 CPU-s, mean 4.5, in a probe on a loaded machine) ≈ 9 minutes in 2 workers,
≈ 2 minutes of whole-network timing, ≈ 2 minutes of retraining 12 chosen models; the md records the real time.
``--quick`` (seconds) writes ``platform_search_quick.*``. The latency table (``<stem>_latency_table.json``) and every search's state
(``<stem>_state/``) are kept: a rerun reuses the table and resumes or reuses finished searches (``--fresh``
starts over).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
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
from effdl_lightning.core.nas.latency_table import LatencySettings, LatencyTable
from effdl_lightning.core.nas.mnas import HARD, SOFT, Architecture, SearchSpace, reward
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.modules import ClassificationModule
from effdl_lightning.nas import (
    Candidate,
    CandidateBuilder,
    CandidateTrainer,
    LatencyPredictor,
    PlatformAwareSearch,
    ReinforceConfig,
    SearchSettings,
    measure_architectures,
    pareto_front,
)

NAME = "platform_search"
REFERENCE = {"kernel": 3, "expansion": 6, "se": False, "layers": 2, "width": 1.0}
REWARDS = {"soft": SOFT, "hard": HARD}
#: (job, strategy, exponents the search optimizes)
JOBS = (
    ("controller-soft", "controller", SOFT),
    ("controller-hard", "controller", HARD),
    ("random", "random", SOFT),
)
BATCH = 32
LR = 0.02


def uptime() -> str:
    load = os.getloadavg()
    return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def run_search(job: dict[str, Any]) -> dict[str, Any]:
    """One search (run in a worker): returns its history and CPU/wall seconds."""
    torch.set_num_threads(1)
    quiet()
    start, cpu = time.perf_counter(), time.process_time()
    settings = LatencySettings(**job["latency"])
    table = LatencyTable(settings, job["table"])
    table.path = None  # read-only here: the main process filled it
    builder = CandidateBuilder()
    predictor = LatencyPredictor(builder, table)
    dm = MNISTSubsetDataModule(batch_size=BATCH, seed=job["seed"], augment=False)
    evaluate = CandidateTrainer(
        dm,
        builder,
        epochs=1,
        limit_train_batches=job["steps"],
        optimizer=partial(torch.optim.Adam, lr=LR),
        seed=job["seed"],
    )
    alpha, beta = job["exponents"]
    search_settings = SearchSettings(
        strategy=job["strategy"],
        candidates=job["candidates"],
        target_ms=job["target_ms"],
        alpha=alpha,
        beta=beta,
        seed=job["seed"],
        controller=ReinforceConfig(**job["controller"]),
    )
    context = {"steps": job["steps"], "batch": BATCH, "lr": LR, "latency": table.header}
    search = PlatformAwareSearch(
        SearchSpace(), evaluate, predictor, search_settings, job["state"], context=context
    )
    result = search.run()
    return {
        "job": job["job"],
        "seed": job["seed"],
        "history": [c.to_dict() for c in result.history],
        "resumed": search.resumed,
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
    }


def retrain(job: dict[str, Any]) -> dict[str, Any]:
    """Train a chosen architecture for ``epochs`` full epochs (Adam, cosine) and test it (run in a worker)."""
    torch.set_num_threads(1)
    quiet()
    cpu = time.process_time()
    seed_all(job["seed"])
    dm = MNISTSubsetDataModule(batch_size=BATCH, seed=job["seed"], augment=False)
    dm.setup()
    model = CandidateBuilder().build(Architecture.from_dict(job["arch"]))
    batches = len(dm.train_dataloader()) if job["train_batches"] is None else job["train_batches"]
    steps = job["epochs"] * batches
    module = ClassificationModule(
        model,
        10,
        optimizer=partial(torch.optim.Adam, lr=LR),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=steps),
        scheduler_interval="step",
        input_shape=(1, 28, 28),
    )
    trainer = quiet_trainer(
        max_epochs=job["epochs"],
        limit_train_batches=job["train_batches"],
        limit_val_batches=0,
        limit_test_batches=job["test_batches"],
    )
    trainer.fit(module, datamodule=dm)
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {**job, "test_acc": float(test["test/acc"]), "cpu_s": time.process_time() - cpu}


def in_pool(fn: Any, jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """``fn(job)`` for every job, in ``workers`` spawned processes (in this one when ``workers`` is 1)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    out = []
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        for future in as_completed([pool.submit(fn, job) for job in jobs]):
            out.append(future.result())
            print(f"  {out[-1].get('job', out[-1].get('label'))} seed {out[-1]['seed']} done", flush=True)
    return out


def hypervolume(points: list[tuple[float, float]], max_latency: float) -> float:
    """Area dominated by ``(latency, acc)`` points from latency 0 to ``max_latency``, divided by ``max_latency``:
    the best accuracy reachable within a latency, averaged over the range (higher is a better front)."""
    area, best = 0.0, 0.0
    front = sorted(p for p in points if p[0] < max_latency)
    for i, (latency, acc) in enumerate(front):
        best = max(best, acc)
        following = front[i + 1][0] if i + 1 < len(front) else max_latency
        area += best * (following - latency)
    return area / max_latency


def summarize(
    runs: list[dict[str, Any]], measured: dict[str, float], target: float, retrained: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per reward (soft/hard) and method (controller/random), over seeds: the chosen model and the Pareto front."""
    max_lat = max(measured.values())
    tested = {(r["method"], r["reward"], r["seed"]): r for r in retrained}
    out: dict[str, Any] = {}
    for name, (alpha, beta) in REWARDS.items():
        for method, job in (("controller", f"controller-{name}"), ("random", "random")):
            rows = []
            for run in (r for r in runs if r["job"] == job):
                hist = run["history"]
                scored = [
                    dict(c, reward=reward(c["acc"], c["latency_ms"], target, alpha, beta)) for c in hist
                ]
                best = max(scored, key=lambda c: (c["reward"], -c["index"]))
                points = [(measured[c["key"]], c["acc"]) for c in scored]
                rows.append(
                    {
                        "seed": run["seed"],
                        "best_key": best["key"],
                        "best_arch": best["arch"],
                        "best_reward": best["reward"],
                        "best_acc": best["acc"],
                        "best_predicted_ms": best["latency_ms"],
                        "best_measured_ms": measured[best["key"]],
                        "best_test_acc": tested.get((method, name, run["seed"]), {}).get("test_acc"),
                        "mean_reward": statistics.fmean(c["reward"] for c in scored),
                        "late_reward": statistics.fmean(
                            c["reward"] for c in scored[-max(1, len(scored) // 3) :]
                        ),
                        "meet_target": sum(c["latency_ms"] <= target for c in scored) / len(scored),
                        "unique": len({c["key"] for c in scored}),
                        "hypervolume": hypervolume(points, max_lat),
                    }
                )
            out[f"{name}/{method}"] = rows
    return out


def measure_all(runs: list[dict[str, Any]], settings: LatencySettings, rounds: int) -> dict[str, float]:
    """Measured whole-network latency of every evaluated architecture (round-robin rounds, median)."""
    archs = {c["key"]: c["arch"] for run in runs for c in run["history"]}
    keys = sorted(archs)
    rows = measure_architectures(CandidateBuilder(), [archs[k] for k in keys], settings, rounds=rounds)
    return {k: r["median_ms"] for k, r in zip(keys, rows, strict=True)}


def _fmt(values: list[float], digits: int = 4, scale: float = 1.0) -> str:
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(result: dict[str, Any]) -> str:
    meta, summary = result["meta"], result["summary"]
    lines = [
        "# Platform-aware search (MnasNet reward): REINFORCE controller vs random search",
        "",
        f"Reproduce: `{meta['command']}`  ",
        f"torch {meta['environment']['torch']}, lightning {meta['environment']['lightning']}, python "
        f"{meta['environment']['python']}; {meta['environment']['machine']}, {meta['environment']['cpus']} CPUs.  ",
        f"Machine load: at start {meta['load_start']}; at the end {meta['load_end']}.  ",
        f"Wall time {meta['wall_s']:.0f} s ({meta['workers']} workers); CPU seconds of the searches "
        f"{meta['search_cpu_s']:.0f}, of the retraining {meta['retrain_cpu_s']:.0f}; latency table "
        f"{meta['table']['entries']} entries ({meta['table']['measured_now']} measured in this run, "
        f"{meta['table']['s']:.0f} s), whole-network timing of {len(result['measured_ms'])} architectures "
        f"{meta['measure_s']:.0f} s.",
        "",
        "## Definitions",
        "- **Reward** (arXiv 1807.11626, Eq. 2): ACC·(LAT/T)^w, w = α if LAT ≤ T else β; soft α = β = −0.07, hard "
        "α = 0, β = −1. ACC = proxy validation accuracy, LAT = latency predicted by the table.",
        f"- **T** = {meta['fraction']} × table latency of the MobileNetV2-style reference ({REFERENCE}) = "
        f"{meta['target_ms']:.3f} ms (reference measured whole: {meta['reference_measured_ms']:.3f} ms).",
        f"- **Latency**: eager PyTorch, batch 1, 1 thread, median of {meta['table']['header']['repeats']} runs "
        f"after {meta['table']['header']['warmup']} warm-up; *predicted* = sum of "
        "the table's block entries (stem, every layer, head with pooling and classifier); *measured* = the whole "
        f"network, median over {meta['rounds']} round-robin rounds.",
        f"- **Proxy accuracy**: {meta['steps']} training batches of {BATCH} (Adam {LR}, cosine to 0), accuracy on "
        "the 500 validation images. **Test accuracy**: the chosen model retrained "
        f"{meta['retrain_epochs']} epochs, 1,000 test images.",
        "- **Mean / last ⅓ reward**: mean reward of all candidates / of the last third of the candidates (what "
        "the policy samples once it has learned; random search stays flat); **meets T**: fraction of candidates with "
        "predicted latency ≤ T; **unique**: distinct architectures among the candidates.",
        "- **Hypervolume**: area under the Pareto front (proxy accuracy vs measured latency) from 0 ms to the "
        "slowest measured architecture, divided by that range; higher is a better front.",
        f"- **Seeds**: {meta['seeds']}; mean ± sample std over seeds. Budget: {meta['candidates']} candidates per "
        "search (a repeated architecture reuses its evaluation); random search is one run per seed scored with "
        "both rewards.",
        "",
        "## Chosen models (best reward of each search)",
        "",
    ]
    header = [
        "reward",
        "method",
        "best reward",
        "proxy acc",
        "test acc",
        "predicted ms",
        "measured ms",
        "mean reward",
        "last ⅓ reward",
        "meets T",
        "unique",
        "hypervolume",
    ]
    rows = []
    for key, runs in summary.items():
        name, method = key.split("/")
        rows.append(
            [
                name,
                method,
                _fmt([r["best_reward"] for r in runs]),
                _fmt([r["best_acc"] for r in runs]),
                _fmt([r["best_test_acc"] for r in runs if r["best_test_acc"] is not None]),
                _fmt([r["best_predicted_ms"] for r in runs], 3),
                _fmt([r["best_measured_ms"] for r in runs], 3),
                _fmt([r["mean_reward"] for r in runs]),
                _fmt([r["late_reward"] for r in runs]),
                _fmt([r["meet_target"] for r in runs], 2),
                _fmt([float(r["unique"]) for r in runs], 1),
                _fmt([r["hypervolume"] for r in runs], 3),
            ]
        )
    lines += md_table(header, rows, "ll" + "r" * 10)
    err = result["prediction"]
    lines += [
        "",
        "## Table-predicted vs measured latency",
        "",
        f"All {err['n']} evaluated architectures: relative error predicted/measured − 1 median "
        f"{err['median_rel_error']:+.3f} (p25 {err['p25_rel_error']:+.3f}, p75 {err['p75_rel_error']:+.3f}), "
        f"median |error| {err['median_abs_rel_error']:.3f}; Spearman rank correlation {err['spearman']:.3f}.",
        "",
    ]
    chosen = [
        [
            key,
            r["seed"],
            r["best_key"],
            f"{r['best_predicted_ms']:.3f}",
            f"{r['best_measured_ms']:.3f}",
            f"{r['best_predicted_ms'] / r['best_measured_ms'] - 1:+.3f}",
        ]
        for key, runs in summary.items()
        for r in runs
    ]
    lines += md_table(
        ["search", "seed", "architecture", "predicted ms", "measured ms", "rel. error"], chosen, "lrlrrr"
    )
    lines += ["", "## Pareto fronts (all seeds pooled; proxy accuracy vs measured latency)", ""]
    for name, front in result["pareto"].items():
        lines.append(
            f"**{name}**: " + ", ".join(f"{p['measured_ms']:.2f} ms / {p['acc']:.3f}" for p in front)
        )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    measured = result["measured_ms"]
    for ax, name in zip(fig.subplots(1, 2), REWARDS, strict=True):
        for method, job, color in (("controller", f"controller-{name}", "C0"), ("random", "random", "C1")):
            pts = [
                (measured[c["key"]], c["acc"])
                for run in result["runs"]
                if run["job"] == job
                for c in run["history"]
            ]
            ax.scatter(
                [x for x, _ in pts],
                [y for _, y in pts],
                s=10,
                alpha=0.35,
                color=color,
                label=f"{method} candidates",
            )
            front = result["pareto"][f"{name}/{method}"]
            ax.step(
                [p["measured_ms"] for p in front],
                [p["acc"] for p in front],
                where="post",
                color=color,
                marker="o",
                markersize=4,
                label=f"{method} Pareto front",
            )
        ax.axvline(
            result["meta"]["target_measured_ms"], color="gray", ls="--", lw=1, label="T (measured scale)"
        )
        ax.set(
            title=f"{name} constraint",
            xlabel="measured latency (ms, batch 1, 1 thread)",
            ylabel="proxy val accuracy",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (platform_search_quick.*)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", type=int, default=30, help="candidates per search")
    parser.add_argument("--steps", type=int, default=50, help="training batches per candidate")
    parser.add_argument(
        "--fraction", type=float, default=0.7, help="T as a fraction of the reference's latency"
    )
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds of whole-network timing")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded searches in parallel")
    parser.add_argument("--fresh", action="store_true", help="re-run every search (the table is kept)")
    args = parser.parse_args(argv)
    quick = args.quick
    if quick:
        args.seeds, args.candidates, args.steps, args.retrain_epochs, args.rounds, args.workers = (
            [0],
            3,
            2,
            1,
            1,
            1,
        )
    stem = output_stem(NAME, quick)
    start, load_start = time.perf_counter(), uptime()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = LatencySettings(
            batch_size=1, threads=1, warmup=2 if quick else 10, repeats=3 if quick else 30
        )
        space, builder = SearchSpace(), CandidateBuilder()
        table_path = args.out / f"{stem}_latency_table.json"
        tick = time.perf_counter()
        table = LatencyTable(settings, table_path)
        predictor = LatencyPredictor(builder, table)
        measured_now = predictor.ensure(builder.block_keys(space))
        table_s = time.perf_counter() - tick
        print(
            f"  latency table: {len(table)} entries, {measured_now} measured now ({table_s:.0f} s)",
            flush=True,
        )
        reference = space.uniform(REFERENCE)
        target = args.fraction * predictor(reference)
        state_dir = args.out / f"{stem}_state"
        if args.fresh and state_dir.exists():
            shutil.rmtree(state_dir)
        controller = {"lr": 0.05, "entropy_weight": 1e-3, "baseline_decay": 0.9, "hidden": 64}
        jobs = [
            {
                "job": job,
                "strategy": strategy,
                "exponents": list(exponents),
                "seed": seed,
                "candidates": args.candidates,
                "steps": args.steps,
                "target_ms": target,
                "latency": {
                    "batch_size": 1,
                    "threads": 1,
                    "warmup": settings.warmup,
                    "repeats": settings.repeats,
                },
                "table": str(table_path),
                "state": str(state_dir / f"{job}_seed{seed}.pt"),
                "controller": controller,
            }
            for seed in args.seeds
            for job, strategy, exponents in JOBS
        ]
        runs = sorted(in_pool(run_search, jobs, args.workers), key=lambda r: (r["seed"], r["job"]))
        search_wall = time.perf_counter() - tick - table_s
        print(f"  searches in {search_wall:.0f} s", flush=True)

        tick = time.perf_counter()
        measured = measure_all(runs, settings, args.rounds)
        ref_measured = measure_architectures(builder, [reference], settings, rounds=args.rounds)[0][
            "median_ms"
        ]
        measure_s = time.perf_counter() - tick
        keys = sorted(measured)
        predicted = {c["key"]: c["latency_ms"] for run in runs for c in run["history"]}
        errors = [predicted[k] / measured[k] - 1 for k in keys]
        q = statistics.quantiles(errors, n=4, method="inclusive") if len(errors) > 1 else [errors[0]] * 3
        prediction = {
            "n": len(keys),
            "median_rel_error": q[1],
            "p25_rel_error": q[0],
            "p75_rel_error": q[2],
            "median_abs_rel_error": statistics.median(abs(e) for e in errors),
            "spearman": _spearman([predicted[k] for k in keys], [measured[k] for k in keys]),
        }

        pre = summarize(runs, measured, target, [])
        retrain_jobs = (
            [
                {
                    "label": f"{key} seed {r['seed']}",
                    "method": key.split("/")[1],
                    "reward": key.split("/")[0],
                    "seed": r["seed"],
                    "arch": r["best_arch"],
                    "epochs": args.retrain_epochs,
                    "train_batches": 2 if quick else None,
                    "test_batches": 2 if quick else None,
                }
                for key, rows in pre.items()
                for r in rows
            ]
            if args.retrain_epochs > 0
            else []
        )
        tick = time.perf_counter()
        retrained = in_pool(retrain, retrain_jobs, args.workers)
        retrain_s = time.perf_counter() - tick
        summary = summarize(runs, measured, target, retrained)
        pareto = {}
        for name in REWARDS:
            for method, job in (("controller", f"controller-{name}"), ("random", "random")):
                pooled = [c for run in runs if run["job"] == job for c in run["history"]]
                cands = [Candidate(**{**c, "latency_ms": measured[c["key"]]}) for c in pooled]
                pareto[f"{name}/{method}"] = [
                    {"key": c.key, "acc": c.acc, "measured_ms": c.latency_ms} for c in pareto_front(cands)
                ]
    finally:
        torch.set_num_threads(threads)
    result = {
        "meta": {
            "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
            "quick": quick,
            "environment": environment(threads=1),
            "load_start": load_start,
            "load_end": uptime(),
            "wall_s": time.perf_counter() - start,
            "search_wall_s": search_wall,
            "search_cpu_s": sum(r["cpu_s"] for r in runs),
            "retrain_s": retrain_s,
            "retrain_cpu_s": sum(r["cpu_s"] for r in retrained),
            "measure_s": measure_s,
            "table": {
                "path": str(table_path),
                "entries": len(table),
                "measured_now": measured_now,
                "s": table_s,
                "header": table.header,
            },
            "workers": args.workers,
            "seeds": args.seeds,
            "candidates": args.candidates,
            "steps": args.steps,
            "fraction": args.fraction,
            "target_ms": target,
            "reference_measured_ms": ref_measured,
            "target_measured_ms": args.fraction * ref_measured,
            "retrain_epochs": args.retrain_epochs,
            "rounds": args.rounds,
            "space": space.to_dict(),
        },
        "summary": summary,
        "prediction": prediction,
        "pareto": pareto,
        "measured_ms": measured,
        "retrained": retrained,
        "runs": runs,
    }
    paths = write_results(args.out, stem, result, to_markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)


if __name__ == "__main__":
    main()
