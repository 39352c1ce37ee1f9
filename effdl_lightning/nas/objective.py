"""A latency-aware objective for Hydra sweepers: the MnasNet reward of a trained model, as a metric.

``hparams_search=mnas_space_optuna`` lets Optuna (TPE) search the per-stage fields of ``model=mnas_space``
with full training runs; :class:`MnasRewardCallback` turns each run's validation accuracy into
``nas/reward = val_acc · (LAT / T)^w`` with the model's *measured* whole-network latency, and
``optimized_metric: nas/reward`` hands it to the sweeper.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from effdl_lightning.core.nas.latency_table import LatencySettings
from effdl_lightning.core.nas.mnas import SOFT, reward
from effdl_lightning.nas.latency import time_module


class MnasRewardCallback(Callback):
    """At the end of ``fit``: measure the model's latency and compute the MnasNet reward of ``monitor``.

    The values are put in ``self.after`` (``nas/latency_ms``, ``nas/target_ms``, ``nas/reward``), which
    :func:`effdl_lightning.run.run` adds to the metrics it returns (and so to the sweeper's objective), and
    are sent to the loggers.

    Args:
        target_ms: target latency ``T`` in ms; ``None``: ``reference_fraction`` × the reference's latency.
        reference: a model whose measured latency sets ``T`` (measured with the trained model, interleaved).
        reference_fraction: ``T`` as a fraction of the reference's latency.
        alpha: reward exponent when the target is met (soft −0.07, hard 0).
        beta: reward exponent otherwise (soft −0.07, hard −1); ``None`` uses ``alpha``.
        monitor: the accuracy metric (logged by the module).
        batch_size: batch of the latency measurement.
        threads: torch threads of the latency measurement.
        warmup: untimed runs before timing.
        repeats: timed runs (the median is used).
        rounds: alternating rounds model / reference (the median over rounds is used).
    """

    def __init__(
        self,
        target_ms: float | None = None,
        reference: nn.Module | None = None,
        reference_fraction: float = 0.5,
        alpha: float = SOFT[0],
        beta: float | None = None,
        monitor: str = "val/acc",
        batch_size: int = 1,
        threads: int = 1,
        warmup: int = 10,
        repeats: int = 30,
        rounds: int = 3,
    ) -> None:
        if target_ms is None and reference is None:
            raise MisconfigurationException(
                "MnasRewardCallback needs target_ms or a reference model; got neither"
            )
        if target_ms is not None and not target_ms > 0:
            raise MisconfigurationException(f"target_ms must be > 0; got {target_ms}")
        if not reference_fraction > 0:
            raise MisconfigurationException(f"reference_fraction must be > 0; got {reference_fraction}")
        if int(rounds) < 1:
            raise MisconfigurationException(f"rounds must be >= 1; got {rounds}")
        try:
            self.settings = LatencySettings(
                batch_size=batch_size, threads=threads, warmup=warmup, repeats=repeats
            )
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        self.target_ms = target_ms
        self.reference = reference
        self.reference_fraction = float(reference_fraction)
        self.alpha = float(alpha)
        self.beta = None if beta is None else float(beta)
        self.monitor = monitor
        self.rounds = int(rounds)
        self.after: dict[str, float] = {}

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor not in trainer.callback_metrics:
            raise MisconfigurationException(
                f"MnasRewardCallback: {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}"
            )
        acc = float(trainer.callback_metrics[self.monitor])
        shape = getattr(pl_module, "input_shape", None)
        if shape is None:
            raise MisconfigurationException(
                "MnasRewardCallback needs the module's input_shape to time the model"
            )
        model: nn.Module = getattr(pl_module, "model", pl_module)
        own, ref = [], []
        for _ in range(self.rounds):
            own.append(time_module(model, shape, self.settings)[0])
            if self.target_ms is None and self.reference is not None:
                ref.append(time_module(self.reference, shape, self.settings)[0])
        latency = sorted(own)[len(own) // 2]
        target = (
            self.target_ms
            if self.target_ms is not None
            else self.reference_fraction * sorted(ref)[len(ref) // 2]
        )
        self.after = {
            "nas/latency_ms": latency,
            "nas/target_ms": float(target),
            "nas/reward": reward(acc, latency, float(target), self.alpha, self.beta),
        }
        for logger in trainer.loggers:
            logger.log_metrics(self.after, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"after": dict(self.after)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.after = dict(state_dict.get("after", {}))
