"""Per-step cost of pruning during training: MagnitudePruning vs no pruning vs Lightning's ModelPruning.

What is measured: the time of one training step of ``Trainer.fit`` (a full Lightning step: data fetch,
forward, loss, backward, optimizer step, every callback hook; from one ``on_train_batch_start`` to the next),
as wall-clock (``time.perf_counter``) and as CPU time of the training thread (``time.thread_time``; with one
torch thread every op, backward included, runs on that thread, so this clock ignores the time the thread
waits for a core on a shared machine), for the same model, optimizer, data order and pruning schedule under

- ``none``: no pruning callback;
- ``ours (scope)``: :class:`effdl_lightning.callbacks.MagnitudePruning` (masks weights and gradients around
  the optimizer step);
- ``ModelPruning (scope)``: ``lightning.pytorch.callbacks.ModelPruning("l1_unstructured", ...)`` (PyTorch's
  ``torch.nn.utils.prune``: ``weight_orig`` + ``weight_mask`` and a forward pre-hook that multiplies them on
  every forward);

for ``scope`` per layer (``use_global_unstructured=False``) and global (``True``).

How: every variant runs its own ``Trainer.fit`` in its own thread of one process, but only one runs at a
time: a baton passes from variant to variant every ``--block`` steps (the order rotating every round), so the
variants are interleaved in short blocks over the same minutes of machine time (baton waits are excluded).
The first epoch is warm-up (not reported). The schedule (identical for all pruned variants): an "epoch" is
``--steps-per-epoch`` steps; the cumulative sparsity after epoch ``k`` (k = 1..E) is Zhu & Gupta's cubic
``s_k = s_f·(1 - (1 - k/E)^3)``. ModelPruning can only prune at epoch ends, so each pruning event is at an
epoch boundary for both: ours at the first ``on_train_batch_start`` of epoch k, ModelPruning at the
``on_train_epoch_end`` just before it, with the incremental ``amount = 1 - (1 - s_k)/(1 - s_{k-1})``
(PyTorch prunes a fraction of the still unpruned weights). Reported per phase -- *pruning window*
(epochs 1..E-1, an event every epoch) and *frozen* (after the last event, masks fixed) -- and per variant:
median, p25, p75 and mean step time (the mean amortizes the pruning events); the overhead = median / median
of ``none`` - 1 with a 95 % bootstrap interval (rounds resampled, paired across variants). A second,
sequential pass times each hook of the pruning callbacks; a micro-benchmark times the masking kernels.
Memory: the parameter-shaped tensors each variant keeps.

Run: ``python -m benchmarks --only pruning_overhead`` (or ``python benchmarks/pruning_overhead.py``);
``--quick`` is a seconds-long smoke run that writes ``pruning_overhead_quick.*`` instead.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    DEFINITIONS,
    RESULTS,
    command_line,
    environment,
    layer_weights,
    md_table,
    output_stem,
    quartiles,
    quiet_trainer,
    seed_all,
    write_results,
)
from effdl_lightning.callbacks import MagnitudePruning
from effdl_lightning.core.pruning import PruningSchedule
from effdl_lightning.core.selection import select_modules
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

NAME = "pruning_overhead"
OPTIMIZER = "SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)"


@dataclass(frozen=True)
class Setup:
    """The measured run: model, batches, schedule and interleaving."""

    model: str
    batch_size: int = 64
    steps_per_epoch: int = 50
    events: int = 10  # E: pruning events (epoch ends 0..E-1), the last one at step E·steps_per_epoch
    frozen_epochs: int = 6
    block: int = 5  # steps per interleaving block
    target_sparsity: float = 0.9
    scopes: tuple[str, ...] = ("layer", "global")
    threads: int = 1
    kernel_repeats: int = 200  # repeats of the mask-kernel micro-benchmark
    profile_steps_per_epoch: int = 10  # epoch length of the (sequential) hook-profile pass
    bootstrap: int = 2000  # resamples of the bootstrap interval

    @property
    def epochs(self) -> int:
        return self.events + self.frozen_epochs

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def schedule(self) -> PruningSchedule:
        """The shared cubic schedule, in optimizer steps (event k at step k·steps_per_epoch, k = 0..E)."""
        n = self.steps_per_epoch
        return PruningSchedule("cubic", 0, self.events * n, n, 0.0, self.target_sparsity)

    def phase(self, step: int) -> str:
        """``warmup`` (epoch 0), ``window`` (epochs 1..E-1) or ``frozen`` (from the last event on)."""
        if step < self.steps_per_epoch:
            return "warmup"
        return "window" if step < self.events * self.steps_per_epoch else "frozen"


# -- interleaving --------------------------------------------------------------------------------------------


class Baton:
    """Lets exactly one variant's thread run at a time, following a fixed sequence of turns."""

    def __init__(self, turns: list[str]) -> None:
        self.turns = turns
        self.position = 0
        self.failed: BaseException | None = None
        self._cond = threading.Condition()

    def wait(self, name: str) -> None:
        """Block until it is ``name``'s turn (or another variant failed)."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.failed is not None
                    or (self.position < len(self.turns) and self.turns[self.position] == name)
                )
            )
            if self.failed is not None:
                raise RuntimeError("another variant failed") from self.failed

    def done(self, name: str) -> None:
        """End ``name``'s turn."""
        with self._cond:
            if self.turns[self.position] != name:
                raise RuntimeError(f"{name} ended a turn that was {self.turns[self.position]}'s")
            self.position += 1
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self.failed = error
            self._cond.notify_all()


class StepTimer(Callback):
    """Records each step's wall-clock and thread CPU time (``on_train_batch_start`` to the next).

    It also passes the baton every ``block`` steps. Put it first in the callback list so that every other
    callback's batch hooks fall inside the step.
    """

    def __init__(self, name: str, baton: Baton, block: int) -> None:
        self.name, self.baton, self.block = name, baton, block
        self.wall: list[float] = []  # wall[i] = wall-clock seconds of step i
        self.cpu: list[float] = []  # cpu[i] = CPU seconds of this thread during step i
        self._last: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        now = (time.perf_counter(), time.thread_time())
        if self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        step = trainer.global_step
        if step > 0 and step % self.block == 0:
            self.baton.done(self.name)
            self.baton.wait(self.name)
            now = (time.perf_counter(), time.thread_time())
        self._last = now


# -- variants ------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One compared configuration and what its run left behind."""

    name: str
    kind: str  # none | ours | lightning
    scope: str | None
    module: ClassificationModule
    callback: Callback | None
    timer: StepTimer | None = None
    threads_seen: int | None = None


def lightning_amount(schedule: PruningSchedule, steps_per_epoch: int) -> Callable[[int], float]:
    """ModelPruning's ``amount(epoch)``: the share of the still unpruned weights that reaches ``s_{epoch+1}``."""

    def amount(epoch: int) -> float:
        before = schedule.sparsity(epoch * steps_per_epoch)
        after = (
            schedule.sparsity((epoch + 1) * steps_per_epoch)
            if epoch < schedule.end // steps_per_epoch
            else before
        )
        return 0.0 if after <= before else 1.0 - (1.0 - after) / (1.0 - before)

    return amount


def make_callback(
    kind: str, scope: str | None, setup: Setup, module: ClassificationModule
) -> Callback | None:
    """The pruning callback of a variant, both pruning every conv/linear weight (no biases) on one schedule."""
    if kind == "none":
        return None
    n = setup.steps_per_epoch
    if kind == "ours":
        return MagnitudePruning(
            target_sparsity=setup.target_sparsity,
            schedule="cubic",
            start=0,
            end=setup.events * n,
            frequency=n,
            unit="step",
            scope=scope or "layer",
            make_permanent=False,  # as ModelPruning below: keep the masks after the fit (memory is counted then)
        )
    targets = [(m, "weight") for m in select_modules(module.model, None, None).values()]
    return ModelPruning(
        pruning_fn="l1_unstructured",
        parameters_to_prune=targets,
        parameter_names=["weight"],
        use_global_unstructured=scope == "global",
        amount=lightning_amount(setup.schedule(), n),
        make_pruning_permanent=False,  # during fit the hooks stay either way; True only strips them at the end
        use_lottery_ticket_hypothesis=False,  # keep training from the current weights, as ours does
        prune_on_train_epoch_end=True,
        verbose=0,
    )


def build_variants(setup: Setup, seed: int = 0) -> list[Variant]:
    """The variants, each a copy of the same initial model with the same optimizer."""
    seed_all(seed)
    base = create(setup.model, num_classes=10, input_shape=(1, 28, 28))
    specs: list[tuple[str, str, str | None]] = [("none", "none", None)]
    for scope in setup.scopes:
        specs += [(f"ours ({scope})", "ours", scope), (f"ModelPruning ({scope})", "lightning", scope)]
    variants = []
    for name, kind, maybe_scope in specs:
        module = ClassificationModule(
            copy.deepcopy(base),
            num_classes=10,
            optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=5e-4),
            input_shape=(1, 28, 28),
        )
        callback = make_callback(kind, maybe_scope, setup, module)
        variants.append(Variant(name, kind, maybe_scope, module, callback))
    return variants


def train_loader(dataset: TensorDataset, batch_size: int, seed: int = 0) -> DataLoader[Any]:
    """The same shuffled order of real MNIST-subset images for every variant."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def run_interleaved(setup: Setup, variants: list[Variant], dataset: TensorDataset) -> int:
    """Fit every variant, interleaved in blocks of ``setup.block`` steps; returns the number of rounds."""
    if setup.steps_per_epoch % setup.block:
        raise ValueError("--block must divide --steps-per-epoch (blocks must not straddle phases)")
    rounds = setup.total_steps // setup.block
    names = [v.name for v in variants]
    turns = [name for r in range(rounds) for name in names[r % len(names) :] + names[: r % len(names)]]
    baton = Baton(turns)

    def work(variant: Variant) -> None:
        try:
            baton.wait(variant.name)
            torch.set_num_threads(setup.threads)  # per thread: OpenMP settings are thread-local
            variant.threads_seen = torch.get_num_threads()
            variant.timer = StepTimer(variant.name, baton, setup.block)
            callbacks = [variant.timer] + ([variant.callback] if variant.callback is not None else [])
            trainer = quiet_trainer(
                max_epochs=setup.epochs,
                limit_train_batches=setup.steps_per_epoch,
                limit_val_batches=0,
                callbacks=callbacks,
            )
            trainer.fit(variant.module, train_dataloaders=train_loader(dataset, setup.batch_size))
            baton.done(variant.name)
        except BaseException as error:
            baton.fail(error)
            raise

    threads = [threading.Thread(target=work, args=(v,), name=v.name) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if baton.failed is not None:
        raise RuntimeError("a variant failed during the interleaved run") from baton.failed
    return rounds


# -- hook profile (separate pass) ------------------------------------------------------------------------------

HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end")


def instrument_hooks(callback: Callback, store: dict[str, list[float]]) -> None:
    """Wrap each of :data:`HOOKS` of ``callback`` (instance attributes) to record its wall-clock seconds."""
    for hook in HOOKS:
        if getattr(type(callback), hook) is getattr(Callback, hook):
            continue  # not overridden: a no-op
        original = getattr(callback, hook)
        store[hook] = []

        def timed(
            *args: Any, _original: Callable[..., Any] = original, _out: list[float] = store[hook]
        ) -> Any:
            start = time.perf_counter()
            result = _original(*args)
            _out.append(time.perf_counter() - start)
            return result

        setattr(callback, hook, timed)


def profile_hooks(setup: Setup, dataset: TensorDataset) -> dict[str, dict[str, Any]]:
    """Time every hook of each pruning callback in a separate, sequential fit of the same schedule.

    For ours, ``on_train_batch_start`` holds the pruning events, ``on_before_optimizer_step`` masks the
    gradients, ``on_train_batch_end`` masks the weights, ``on_train_epoch_end`` logs ``compress/*``. For
    ModelPruning only ``on_train_epoch_end`` (its events) is a callback hook: its per-step cost is inside
    forward/backward (the pre-hook's ``weight_orig * weight_mask`` and its gradient). Medians; per-step hooks
    are timed after the first epoch, outside the event steps.
    """
    out: dict[str, dict[str, Any]] = {}
    torch.set_num_threads(setup.threads)
    n = setup.steps_per_epoch
    for variant in build_variants(setup):
        if variant.callback is None:
            continue
        store: dict[str, list[float]] = {}
        instrument_hooks(variant.callback, store)
        trainer = quiet_trainer(
            max_epochs=setup.epochs,
            limit_train_batches=n,
            limit_val_batches=0,
            callbacks=[variant.callback],
        )
        trainer.fit(variant.module, train_dataloaders=train_loader(dataset, setup.batch_size))
        row: dict[str, Any] = {}
        for hook, seconds in store.items():
            if hook == "on_train_epoch_end":
                row[hook] = {"median_ms": 1e3 * statistics.median(seconds), "n": len(seconds)}
                continue
            steady = [s for i, s in enumerate(seconds) if i >= n and i % n != 0]
            row[hook] = {"per_step_us": 1e6 * statistics.median(steady), "n": len(steady)}
            if hook == "on_train_batch_start":  # ours prunes here at steps k·n, k = 0..E
                events = [s for i, s in enumerate(seconds) if i % n == 0 and i <= setup.events * n]
                row["pruning_event"] = {"median_ms": 1e3 * statistics.median(events), "n": len(events)}
        if variant.kind == "lightning":  # its events are its epoch-end hook at epochs 0..E-1
            events = [s for e, s in enumerate(store["on_train_epoch_end"]) if e < setup.events]
            row["pruning_event"] = {"median_ms": 1e3 * statistics.median(events), "n": len(events)}
        row["per_step_us"] = sum(h["per_step_us"] for h in row.values() if "per_step_us" in h)
        out[variant.name] = row
    return out


def _mul_cast_(weight: Tensor, mask: Tensor) -> Tensor:
    return weight.mul_(mask.to(weight.dtype))


def mask_kernels(model: str, threads: int, repeats: int = 200, warmup: int = 20) -> list[dict[str, Any]]:
    """Where our per-step time goes: one in-place masking of each pruned weight shape, five ways.

    ``float mul_`` is what the callback does (``g.mul_(factor)`` with a 0/1 mask in the weight's dtype); the
    others are alternatives: a boolean mask (type promotion element by element), casting it first, a
    ``uint8`` mask, ``masked_fill_`` with the inverted mask. 90 % sparse masks, interleaved round-robin,
    median µs of ``repeats`` calls after ``warmup``, ``threads`` torch threads.
    """
    rows = []
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    for name, weight in layer_weights(create(model)).items():
        w = torch.randn(weight.shape, generator=generator)
        keep = torch.rand(w.shape, generator=generator) > 0.9
        variants: dict[str, Callable[[], Any]] = {
            "bool mul_": partial(Tensor.mul_, w, keep),
            "bool→float, mul_": partial(_mul_cast_, w, keep),
            "uint8 mul_": partial(Tensor.mul_, w, keep.to(torch.uint8)),
            "float mul_": partial(Tensor.mul_, w, keep.to(w.dtype)),
            "masked_fill_": partial(Tensor.masked_fill_, w, ~keep, 0.0),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(warmup + repeats):
            for key, fn in variants.items():
                start = time.perf_counter()
                fn()
                if i >= warmup:
                    times[key].append(time.perf_counter() - start)
        row: dict[str, Any] = {"tensor": name, "shape": list(w.shape), "numel": w.numel()}
        row["us"] = {k: 1e6 * statistics.median(v) for k, v in times.items()}
        rows.append(row)
    return rows


# -- memory ----------------------------------------------------------------------------------------------------


def kept_tensors(variant: Variant) -> dict[str, Any]:
    """Parameter-shaped tensors a variant holds for the pruned weights (excluding optimizer state).

    Counted (unique tensors): parameters and buffers of the pruned modules, plain tensor attributes of those
    modules (ModelPruning's recomputed ``weight``), and the callback's masks. Optimizer state (momentum) is
    the same in every variant and not counted.
    """
    modules = select_modules(variant.module.model, None, None)
    counts = {"fp32": 0, "bool": 0}
    nbytes = 0
    seen: set[tuple[int, tuple[int, ...]]] = set()

    def add(t: Tensor) -> None:
        nonlocal nbytes
        key = (t.data_ptr(), tuple(t.shape))  # views of one storage (global masks) count once each
        if key in seen:
            return
        seen.add(key)
        nbytes += t.numel() * t.element_size()
        counts["bool" if t.dtype == torch.bool else "fp32"] += 1

    def weight_of(module: torch.nn.Module) -> Tensor:
        return cast(Tensor, module.weight_orig if hasattr(module, "weight_orig") else module.weight)

    for module in modules.values():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        tensors += [v for v in vars(module).values() if isinstance(v, Tensor)]
        for t in tensors:
            if t.shape == weight_of(module).shape:
                add(t)
    if isinstance(variant.callback, MagnitudePruning):
        for t in [*variant.callback.masks.values(), *variant.callback._factors.values()]:
            add(t)
    return {
        "tensors_per_weight": (counts["fp32"] + counts["bool"]) / len(modules),
        "fp32_tensors": counts["fp32"],
        "bool_tensors": counts["bool"],
        "bytes": nbytes,
        "weight_bytes": sum(4 * weight_of(m).numel() for m in modules.values()),
    }


def final_sparsity(variant: Variant) -> float:
    """Fraction of zeros in the effective pruned weights (``weight_orig * weight_mask`` for ModelPruning)."""
    weights = layer_weights(variant.module.model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# -- analysis --------------------------------------------------------------------------------------------------


def summarize(setup: Setup, variants: list[Variant]) -> dict[str, Any]:
    """Per clock (wall, cpu), phase and variant: step-time quartiles (ms) and the overhead vs ``none``.

    The overhead is the ratio of median step times − 1. Its 95 % interval is a paired bootstrap over rounds:
    the same rounds (one block of every variant each) are drawn with replacement for the variant and for
    ``none``, and the ratio of the medians of the drawn steps is recomputed.
    """
    base = variants[0]
    assert base.kind == "none" and base.timer is not None
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        out[clock] = {}
        for phase in ("window", "frozen"):
            blocks = [
                b
                for b in range(setup.total_steps // setup.block)
                if setup.phase(b * setup.block) == phase and (b + 1) * setup.block <= len(base.timer.wall)
            ]
            draws = rng.integers(0, len(blocks), size=(setup.bootstrap, len(blocks)))

            def by_block(v: Variant, clock: str = clock, blocks: list[int] = blocks) -> np.ndarray:
                assert v.timer is not None
                values = np.asarray(getattr(v.timer, clock)) * 1e3
                return np.stack([values[b * setup.block : (b + 1) * setup.block] for b in blocks])

            ref = by_block(base)
            ref_boot = np.median(ref[draws].reshape(setup.bootstrap, -1), axis=1)
            rows = []
            for v in variants:
                ms = by_block(v)
                stats = quartiles(ms.ravel().tolist())
                boot = np.median(ms[draws].reshape(setup.bootstrap, -1), axis=1) / ref_boot
                lo, hi = np.quantile(boot, [0.025, 0.975])
                rows.append(
                    {
                        "variant": v.name,
                        **{f"{k}_ms": val for k, val in stats.items() if k != "n"},
                        "steps": stats["n"],
                        "overhead_pct": 100 * (stats["median"] / float(np.median(ref)) - 1),
                        "ci95_pct": [100 * (float(lo) - 1), 100 * (float(hi) - 1)],
                        "overhead_mean_pct": 100 * (stats["mean"] / float(ref.mean()) - 1),
                    }
                )
            out[clock][phase] = rows
    return out


def run_model(setup: Setup, dataset: TensorDataset, profile: bool) -> dict[str, Any]:
    """Interleaved timing, memory, final sparsities and (optionally) the hook and kernel profiles of a model."""
    variants = build_variants(setup)
    start = time.perf_counter()
    rounds = run_interleaved(setup, variants, dataset)
    schedule = setup.schedule()
    result: dict[str, Any] = {
        "setup": {**setup.__dict__, "epochs": setup.epochs, "total_steps": setup.total_steps},
        "schedule": [{"step": t, "sparsity": schedule.sparsity(t)} for t in schedule.events()],
        "rounds": rounds,
        "interleaved_s": time.perf_counter() - start,
        "timing": summarize(setup, variants),
        "memory": {v.name: kept_tensors(v) for v in variants},
        "final_sparsity": {v.name: final_sparsity(v) for v in variants},
        "threads_seen": sorted({v.threads_seen for v in variants if v.threads_seen is not None}),
    }
    if profile:
        # hooks: same schedule on shorter epochs, one frozen epoch (per-step hook costs do not change)
        short = replace(setup, steps_per_epoch=setup.profile_steps_per_epoch, frozen_epochs=1)
        result["hooks"] = profile_hooks(short, dataset)
        result["mask_kernels"] = mask_kernels(setup.model, setup.threads, setup.kernel_repeats)
    return result


# -- report ----------------------------------------------------------------------------------------------------


def verdict(result: dict[str, Any], limit: float = 5.0) -> list[dict[str, Any]]:
    """Our overhead per model, scope, phase and clock, and whether it was ≤ ``limit`` %."""
    checks = []
    for model in result["models"]:
        for clock, phases in model["timing"].items():
            for phase, rows in phases.items():
                for row in rows:
                    if row["variant"].startswith("ours"):
                        checks.append(
                            {
                                "model": model["setup"]["model"],
                                "clock": clock,
                                "phase": phase,
                                "variant": row["variant"],
                                "overhead_pct": row["overhead_pct"],
                                "ci95_pct": row["ci95_pct"],
                                "held": row["overhead_pct"] <= limit,
                                "resolved": row["ci95_pct"][1] <= limit or row["ci95_pct"][0] > limit,
                            }
                        )
    return checks


def _timing_table(rows_wall: list[dict[str, Any]], rows_cpu: list[dict[str, Any]]) -> list[str]:
    def ci(r: dict[str, Any]) -> str:
        return f"{r['overhead_pct']:+.1f} % [{r['ci95_pct'][0]:+.1f}, {r['ci95_pct'][1]:+.1f}]"

    return md_table(
        [
            "variant",
            "wall ms: median (p25–p75)",
            "wall overhead [95 % CI]",
            "CPU ms: median (p25–p75)",
            "CPU overhead [95 % CI]",
            "mean overhead wall / CPU",
            "steps",
        ],
        [
            (
                w["variant"],
                f"{w['median_ms']:.2f} ({w['p25_ms']:.2f}–{w['p75_ms']:.2f})",
                "–" if i == 0 else ci(w),
                f"{c['median_ms']:.2f} ({c['p25_ms']:.2f}–{c['p75_ms']:.2f})",
                "–" if i == 0 else ci(c),
                "–" if i == 0 else f"{w['overhead_mean_pct']:+.1f} / {c['overhead_mean_pct']:+.1f} %",
                w["steps"],
            )
            for i, (w, c) in enumerate(zip(rows_wall, rows_cpu, strict=True))
        ],
    )


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    env = meta["environment"]
    lines = [
        "# Pruning overhead per training step: MagnitudePruning vs none vs Lightning's ModelPruning",
        "",
        f"Command: `{meta['command']}`; torch {env['torch']}, lightning {env['lightning']}, Python "
        f"{env['python']}, {env['machine']}, {env['cpus']} CPUs shared with other jobs, **{meta['threads']} "
        f"torch thread(s)** (`torch.get_num_threads()` in the training threads: {meta['threads_seen']}); "
        f"total {meta['wall_s']:.0f} s.",
        "",
        "## Definitions",
        "",
        "- **Step time** = time from one `on_train_batch_start` to the next inside `Trainer.fit` (data fetch, "
        "forward, loss, backward, optimizer step, all callback hooks and, at epoch ends, the epoch hooks), "
        "as **wall-clock** (`time.perf_counter`) and as **CPU time** of the training thread "
        "(`time.thread_time`: with one torch thread every op, backward included, runs on it, so this clock "
        "does not count the time the thread waits for a core while other jobs share the machine).",
        "- " + DEFINITIONS["timing"],
        "- **Overhead** = median step time of the variant / median step time of `none` − 1 (same clock, "
        "phase and run). *95 % CI*: paired bootstrap over rounds (one block of every variant per round, the "
        f"same rounds drawn for both; {meta['bootstrap']} resamples). *Mean overhead* uses mean step times, "
        "so it includes the pruning events.",
        "- **Phases**: *pruning window* = epochs 1..E−1 (a pruning event at every epoch boundary), *frozen* = "
        "after the last event (masks fixed). Epoch 0 is warm-up and not reported.",
        "- **Kept tensors** = parameter-shaped tensors held for the pruned weights (parameters, buffers, plain "
        "module attributes, the callback's boolean masks and 0/1 float factors; each tensor once; optimizer momentum is identical everywhere and "
        "not counted).",
        "",
        "## Setup",
        "",
        f"- Data: **real MNIST-subset images** (the 3,500 training images of `MNISTSubsetDataModule(seed=0)`, "
        f"normalized, in memory), batch {meta['batch_size']}, the same shuffled order for every variant.",
        f"- Optimizer: {OPTIMIZER}, no LR scheduler; `ClassificationModule` (cross-entropy, logs train "
        "loss/accuracy); `Trainer` on CPU without logger, checkpointing, progress bar or validation.",
        "- Pruned: every conv/linear weight (no biases), by both callbacks. Schedule (both): an epoch is "
        f"{meta['steps_per_epoch']} steps; cumulative sparsity after epoch k = s_f·(1−(1−k/E)³), "
        f"s_f = {meta['target_sparsity']}, E = {meta['events']} events, then {meta['frozen_epochs']} frozen "
        "epochs. Ours: `MagnitudePruning(target_sparsity, schedule='cubic', start=0, end=E·n, frequency=n, "
        "unit='step', scope, make_permanent=False)` prunes at the first batch of epoch k. ModelPruning: `ModelPruning("
        "'l1_unstructured', parameters_to_prune=<the same layers>, parameter_names=['weight'], "
        "use_global_unstructured=<scope == global>, amount=<1−(1−s_k)/(1−s_(k−1)) at the end of epoch k−1>, "
        "make_pruning_permanent=False, use_lottery_ticket_hypothesis=False)`.",
        "- What differs: ModelPruning can prune only at epoch (or validation) ends and its `amount` is a "
        "fraction of the still unpruned weights (converted above; PyTorch rounds per event, ours rounds the "
        "cumulative count: the final sparsities are in the memory table). ModelPruning masks by "
        "reparametrization (`weight = weight_orig · weight_mask` in a forward pre-hook on every forward, and "
        "its gradient in backward); momentum and weight decay keep moving the pruned `weight_orig` entries "
        "(harmless, they are masked). Ours masks the gradients before the optimizer step with 0/1 masks "
        "in the weight's dtype, and the momentum at each event; with SGD a zero weight with zero gradient and "
        "momentum stays zero, so the weights are not re-masked per step (`remask_weights='auto'`), only "
        "checked at each epoch end. `make_pruning_permanent=True` would only strip the "
        "hooks after the fit; during it they are the same.",
        f"- Interleaving: every variant in its own thread of one process, one running at a time; a baton passes "
        f"every {meta['block']} steps, the order rotating each round; baton waits are excluded from both "
        "clocks.",
        "",
    ]
    for model in result["models"]:
        s = model["setup"]
        lines += [
            f"## {s['model']}: {s['total_steps']} steps per variant, {model['rounds']} rounds "
            f"({model['interleaved_s']:.0f} s interleaved)",
            "",
        ]
        for phase, title in (("window", "pruning window"), ("frozen", "frozen masks")):
            lines += [f"**{title}**", ""]
            lines += _timing_table(model["timing"]["wall"][phase], model["timing"]["cpu"][phase])
            lines.append("")
        lines += ["**kept tensors and final sparsity**", ""]
        lines += md_table(
            [
                "variant",
                "tensors per pruned weight",
                "fp32 / bool tensors",
                "MiB (weights alone)",
                "final sparsity",
            ],
            [
                (
                    name,
                    f"{m['tensors_per_weight']:.0f}",
                    f"{m['fp32_tensors']} / {m['bool_tensors']}",
                    f"{m['bytes'] / 2**20:.2f} ({m['weight_bytes'] / 2**20:.2f})",
                    f"{model['final_sparsity'][name]:.4f}",
                )
                for name, m in model["memory"].items()
            ],
        )
        lines.append("")
        if "hooks" in model:
            none_cpu = model["timing"]["cpu"]["frozen"][0]["median_ms"]
            lines += [
                "**callback hooks** (separate sequential pass, wall-clock, median per call; per-step hooks in "
                "µs, outside event steps; pruning events and epoch-end hooks in ms). *Per-step total* is the sum "
                "of the per-step hooks, and its share of the frozen-phase CPU median step of `none`.",
                "",
            ]
            hook_rows = []
            for name, hooks in model["hooks"].items():
                cells = []
                for hook in (*HOOKS, "pruning_event"):
                    h = hooks.get(hook)
                    if h is None:
                        cells.append("–")
                    elif "per_step_us" in h:
                        cells.append(f"{h['per_step_us']:.1f} µs")
                    else:
                        cells.append(f"{h['median_ms']:.2f} ms")
                total = hooks["per_step_us"]
                cells.append(
                    f"{total:.0f} µs = {total / (10 * none_cpu):.1f} %" if total else "– (in forward)"
                )
                hook_rows.append((name, *cells))
            lines += md_table(["variant", *HOOKS, "pruning event", "per-step total"], hook_rows)
            lines.append("")
        if "mask_kernels" in model:
            kernels = model["mask_kernels"]
            none_cpu = model["timing"]["cpu"]["frozen"][0]["median_ms"]
            keys = list(kernels[0]["us"])
            lines += [
                "**where our per-step time goes**: one in-place masking of each pruned weight (micro-benchmark, "
                "90 % sparse masks, interleaved, median µs). The callback multiplies each gradient once per step "
                "by a 0/1 mask in the weight's dtype (`float mul_`); the other columns are alternatives "
                "(a boolean mask is promoted to float element by element on every call). Last row: one "
                "product per tensor per step, also as a share of the frozen-phase CPU median step of `none`.",
                "",
            ]
            body = [
                (k["tensor"], "×".join(map(str, k["shape"])), *(f"{k['us'][key]:.1f}" for key in keys))
                for k in kernels
            ]
            totals = [sum(k["us"][key] for k in kernels) for key in keys]
            body.append(("sum per step", "", *(f"{t:.0f} µs = {t / (10 * none_cpu):.1f} %" for t in totals)))
            lines += md_table(["tensor", "shape", *(f"{key} µs" for key in keys)], body)
            lines.append("")
    checks = verdict(result)
    lines += ["## Acceptance: our overhead ≤ 5 % (median step time vs `none`)", ""]
    lines += md_table(
        ["model", "phase", "variant", "wall overhead [95 % CI]", "CPU overhead [95 % CI]"],
        [
            (
                w["model"],
                w["phase"],
                w["variant"],
                *(
                    f"{c['overhead_pct']:+.1f} % [{c['ci95_pct'][0]:+.1f}, {c['ci95_pct'][1]:+.1f}] "
                    + ("≤ 5 %" if c["held"] else "**> 5 %**")
                    for c in (w, c)
                ),
            )
            for w, c in zip(
                [c for c in checks if c["clock"] == "wall"],
                [c for c in checks if c["clock"] == "cpu"],
                strict=True,
            )
        ],
        align="lllrr",
    )
    lines.append("")
    for clock, label in (("wall", "Wall-clock"), ("cpu", "CPU time")):
        mine = [c for c in checks if c["clock"] == clock]
        held = sum(c["held"] for c in mine)
        unresolved = sum(not c["resolved"] for c in mine)
        lines.append(
            f"- {label}: the median overhead was ≤ 5 % in {held} of {len(mine)} cases "
            f"(model × phase × scope); in {unresolved} of them the 95 % CI contains 5 %."
        )
    lines += ["", "Where our time goes (from the hook and kernel profiles above):", ""]
    for model in result["models"]:
        if "hooks" not in model or "mask_kernels" not in model:
            continue
        none_cpu = model["timing"]["cpu"]["frozen"][0]["median_ms"]
        hooks = [h["per_step_us"] for name, h in model["hooks"].items() if name.startswith("ours")]
        kernels = {
            k: sum(row["us"][k] for row in model["mask_kernels"]) for k in model["mask_kernels"][0]["us"]
        }
        lines.append(
            f"- {model['setup']['model']}: our per-step hooks take {min(hooks):.0f}–{max(hooks):.0f} µs "
            f"= {min(hooks) / (10 * none_cpu):.1f}–{max(hooks) / (10 * none_cpu):.1f} % of a `none` step "
            f"({none_cpu:.2f} ms CPU); of that, the gradient products with 0/1 float masks take "
            f"{kernels['float mul_']:.0f} µs ({kernels['float mul_'] / (10 * none_cpu):.1f} %; with boolean "
            f"masks they would take {kernels['bool mul_']:.0f} µs). "
            "Pruning events are rare (one per epoch) and cost about as much as ModelPruning's."
        )
    lines.append("")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (pruning_overhead_quick.*)"
    )
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (machine is shared)")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--events", type=int, default=10, help="pruning events E (one per epoch)")
    parser.add_argument("--frozen-epochs", type=int, default=Setup.frozen_epochs)
    parser.add_argument("--block", type=int, default=Setup.block, help="steps per interleaving block")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    quick = args.quick
    models = ["lenet300"] if quick else args.models
    spe, events, frozen, block = (
        (4, 3, 2, 2)
        if quick
        else (
            args.steps_per_epoch,
            args.events,
            args.frozen_epochs,
            args.block,
        )
    )
    previous_threads = torch.get_num_threads()
    dm = MNISTSubsetDataModule(batch_size=args.batch_size, seed=0)
    dm.setup()
    assert dm.train_dataset is not None
    results = []
    threads_seen: set[int] = set()
    for name in models:
        setup = Setup(
            model=name,
            batch_size=args.batch_size,
            steps_per_epoch=spe,
            events=events,
            frozen_epochs=frozen,
            block=block,
            threads=args.threads,
            kernel_repeats=20 if quick else 200,
            profile_steps_per_epoch=spe if quick else Setup.profile_steps_per_epoch,
            bootstrap=200 if quick else Setup.bootstrap,
            scopes=("layer",) if quick else Setup.scopes,
        )
        results.append(run_model(setup, dm.train_dataset, profile=True))
        threads_seen.update(results[-1]["threads_seen"])
        for phase, rows in results[-1]["timing"]["cpu"].items():
            print(
                name,
                phase,
                ", ".join(f"{r['variant']}: {r['overhead_pct']:+.1f} %" for r in rows),
                flush=True,
            )
    torch.set_num_threads(previous_threads)
    result: dict[str, Any] = {
        "meta": {
            "command": command_line(NAME, sys.argv[1:] if argv is None else argv),
            "environment": environment(args.threads),
            "threads": args.threads,
            "threads_seen": sorted(threads_seen),
            "batch_size": args.batch_size,
            "steps_per_epoch": spe,
            "events": events,
            "frozen_epochs": frozen,
            "block": block,
            "bootstrap": results[0]["setup"]["bootstrap"],
            "target_sparsity": 0.9,
            "optimizer": OPTIMIZER,
            "data": "real MNIST-subset training images (3,500), in memory",
            "wall_s": time.perf_counter() - start,
        },
        "models": results,
    }
    paths = write_results(args.out, output_stem(NAME, quick), result, to_markdown(result))
    print(f"wrote {', '.join(str(p) for p in paths)} in {result['meta']['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
