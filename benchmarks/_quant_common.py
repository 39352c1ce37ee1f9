"""Helpers shared by the quantization benchmarks (binary_quantization, dorefa_sweep, inq).

* :func:`preset` composes an experiment preset (``conf/experiment/<name>.yaml``) with overrides, so the
  benchmarks train with the presets' own data, model, optimizer, LR schedule and epochs;
* :func:`train` fits and tests one run of a composed config on a quiet CPU trainer (one torch thread), with
  or without the preset's compression callbacks, and records the per-epoch validation accuracy;
* :func:`run_jobs` runs independent jobs in parallel single-threaded processes and appends every finished
  row to ``<out>/<stem>_runs.jsonl`` at once, so an interrupted benchmark resumes where it stopped;
* :func:`levels_check` verifies that INQ left every weight exactly 0 or a power of two of its level set.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import Tensor, nn

from benchmarks._common import mean_std, quiet, quiet_trainer, seed_all
from effdl_lightning.core.quant import quantized_layers
from effdl_lightning.core.selection import select_modules
from effdl_lightning.models import create

#: what ``--quick`` trains: a few batches of every split
QUICK_LIMITS = {"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2}


def preset(experiment: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/experiment/<experiment>.yaml`` composed as ``train.py`` would, with ``overrides``."""
    from effdl_lightning.run import compose

    with tempfile.TemporaryDirectory() as tmp:
        return compose([f"experiment={experiment}", *overrides], output_dir=tmp)


class _ValCurve(Callback):
    """Records ``val/acc`` after every validation epoch (not during the sanity check)."""

    def __init__(self) -> None:
        self.acc: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.acc.append(float(trainer.callback_metrics["val/acc"]))


def compression_callbacks(cfg: DictConfig) -> list[Callback]:
    """The preset's compression callbacks (``cfg.compression``), in their order."""
    group = cfg.get("compression") or {}
    return [instantiate(c, _convert_="all") for c in group.values() if c is not None]


def train(
    cfg: DictConfig,
    *,
    compress: bool,
    quick: bool,
    validate: bool = True,
    ckpt_path: str | Path | None = None,
    save_path: str | Path | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Fit ``cfg``'s model on its data with its optimizer/schedule (and compression when ``compress``); test.

    The trainer is the preset's in what changes results (``max_epochs``, ``gradient_clip_val``) and quiet in
    the rest (no logger, checkpoints or progress bar). ``ckpt_path`` resumes a fit (model, optimizer, LR
    schedule, epoch), ``save_path`` writes a checkpoint at the end of fit; ``max_epochs`` overrides the
    preset's (the LR schedule keeps the preset's length). Returns ``{"test_acc", "val_curve", "train_s",
    "module", "callbacks", "trainer", "datamodule"}``.
    """
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    seed_all(int(cfg.seed))
    datamodule: pl.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    module: pl.LightningModule = instantiate(cfg.module, model=model, _convert_="all")
    callbacks = compression_callbacks(cfg) if compress else []
    curve = _ValCurve()
    options: dict[str, Any] = {
        "max_epochs": int(max_epochs if max_epochs is not None else cfg.trainer.max_epochs),
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "callbacks": [*callbacks, curve],
        **(QUICK_LIMITS if quick else {}),
    }
    if not validate:
        options["limit_val_batches"] = 0
    trainer = quiet_trainer(**options)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if save_path is not None:
        trainer.save_checkpoint(str(save_path))
    (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return {
        "test_acc": float(test["test/acc"]),
        "val_curve": curve.acc,
        "train_s": time.perf_counter() - start,
        "module": module,
        "callbacks": callbacks,
        "trainer": trainer,
        "datamodule": datamodule,
    }


def weight_storage(model: nn.Module) -> dict[str, int]:
    """Bytes of the conv/linear weights at fp32 and at their quantized widths (``ceil(numel·bits/8)``).

    A weight without an enabled weight quantizer (or at 32 bits) counts 4 bytes per element; scales are not
    included here (``quantized_size_bytes`` counts them with the whole model).
    """
    quantized = quantized_layers(model)
    fp32 = packed = 0
    for name, module in select_modules(model, None, None).items():
        numel = module.weight.numel()
        fp32 += 4 * numel
        quantizer = getattr(quantized.get(name), "weight_quantizer", None)
        bits = int(getattr(quantizer, "bits", 32)) if quantizer is not None and quantizer.enabled else 32
        packed += -(-numel * bits // 8) if bits < 32 else 4 * numel
    return {"weights_fp32_bytes": fp32, "weights_bytes": packed}


def fp32_param_bytes(model: nn.Module) -> int:
    """4 bytes × every parameter (weights, biases, norm layers)."""
    return 4 * sum(p.numel() for p in model.parameters())


def load_rows(log: Path, fresh: bool) -> list[dict[str, Any]]:
    """The rows recorded in the JSON-lines ``log`` (none, and the file removed, when ``fresh``)."""
    if fresh:
        log.unlink(missing_ok=True)
        return []
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_jobs(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    jobs: Sequence[dict[str, Any]],
    key: Sequence[str],
    log: Path,
    done: Sequence[dict[str, Any]],
    workers: int,
) -> list[dict[str, Any]]:
    """``fn(job)`` for every job whose ``key`` fields are not among ``done``; rows in the order of ``jobs``.

    With ``workers > 1`` the jobs run in that many spawned single-threaded processes. Each finished row
    (``fn`` returns the job's fields plus its results) is appended to ``log`` at once.
    """

    def ident(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(json.dumps(row[k], sort_keys=True) for k in key)

    rows = {ident(r): r for r in done}
    todo = [j for j in jobs if ident(j) not in rows]
    log.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict[str, Any]) -> None:
        rows[ident(row)] = row
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        shown = {k: row[k] for k in key} | {"test_acc": round(row["test_acc"], 4)}
        print(f"  {shown} in {row.get('train_s', 0):.0f} s", flush=True)

    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            futures = [pool.submit(fn, job) for job in todo]
            for future in as_completed(futures):
                record(future.result())
    else:
        for job in todo:
            record(fn(job))
    return [rows[ident(j)] for j in jobs]


def pct(values: Sequence[float]) -> str:
    """``mean ± std`` of accuracies in percent (sample std over seeds)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"values", "mean", "std", "n"}`` (sample std; 0 for one value)."""
    mean, std = mean_std(values) if values else (math.nan, math.nan)
    return {"values": list(values), "mean": mean, "std": std, "n": len(values)}


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Element-wise mean of equally long curves (truncated to the shortest)."""
    length = min((len(c) for c in curves), default=0)
    return [sum(c[i] for c in curves) / len(curves) for i in range(length)]


def provenance(meta: dict[str, Any]) -> str:
    """The "Reproduce" line of a result: command, runs, training time summed over runs, parallelism, load."""
    return (
        f"Reproduce: `{meta['command']}`. {meta['runs']} runs, {meta['train_s_total'] / 60:.0f} min of training "
        f"summed over runs (1 thread each, {meta['workers']} in parallel on 2 shared cores; load average "
        f"{meta['load_avg']:.1f} at the start of the last invocation). Finished runs are kept in "
        f"`{meta['stem']}_runs.jsonl` and not rerun (`--fresh` reruns all)."
    )


def levels_check(weights: dict[str, Tensor], bits: int, n1: dict[str, int]) -> list[dict[str, Any]]:
    """Per quantized weight: distinct values, the bound 2^(b−1)+1, and whether every value is a level."""
    out = []
    for name, weight in weights.items():
        w = weight.detach().flatten()
        powers = [2.0**n for n in range(n1[name] + 1 - 2 ** (bits - 2), n1[name] + 1)]
        levels = torch.tensor([0.0, *powers, *(-p for p in powers)], dtype=w.dtype)
        mantissa, _ = torch.frexp(w[w != 0])
        out.append(
            {
                "name": name,
                "n1": n1[name],
                "distinct": int(torch.unique(w).numel()),
                "bound": 2 ** (bits - 1) + 1,
                "in_levels": bool(torch.isin(w, levels).all()),
                "powers_of_two": bool((mantissa.abs() == 0.5).all()),
                "zeros": float((w == 0).float().mean()),
            }
        )
    return out


def zero_fraction(layers: list[dict[str, Any]]) -> float:
    """Zero weights over all quantized weights of LeNet-5 (each layer's zero fraction weighted by its size)."""
    sizes = {
        n: p.numel() for n, p in create("lenet5", num_classes=10, input_shape=(1, 28, 28)).named_parameters()
    }
    total = sum(sizes[la["name"]] for la in layers)
    return sum(la["zeros"] * sizes[la["name"]] for la in layers) / total
