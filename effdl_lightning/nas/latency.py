"""Filling the latency table with our measurement, predicting candidates, and checking the prediction.

Every entry is :func:`effdl_lightning.measure.measure_latency` (eager PyTorch, median after warm-up) of one
planned part of ``model=mnas_space`` at its input shape, under the table's batch size and thread count. The
predicted latency of an architecture is the sum over its parts (stem, every layer, head with pooling and
classifier); :func:`compare_predicted_measured` times whole networks the same way and reports the error.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from effdl_lightning.core.nas.latency_table import LatencySettings, LatencyTable, MeasureFn
from effdl_lightning.core.nas.mnas import Architecture
from effdl_lightning.measure import measure_latency
from effdl_lightning.models.mnas_space import PlannedBlock, build_planned_block
from effdl_lightning.nas.space import CandidateBuilder


def time_module(
    module: nn.Module, input_shape: Sequence[int], settings: LatencySettings
) -> tuple[float, float, float]:
    """``(median, p25, p75)`` ms of ``module`` at ``(settings.batch_size, *input_shape)`` under ``settings``."""
    timings = measure_latency(
        module.to(settings.device),
        tuple(input_shape),
        batch_sizes=(settings.batch_size,),
        warmup=settings.warmup,
        repeats=settings.repeats,
        threads=settings.threads,
    )
    return timings[settings.batch_size]


def block_measure_fn(
    blocks: Mapping[str, PlannedBlock], settings: LatencySettings, act: str = "relu", num_classes: int = 10
) -> MeasureFn:
    """``measure(key)`` for :meth:`LatencyTable.ensure`: build the planned part named ``key`` and time it.

    Module initialization draws from a private generator, so filling the table leaves torch's global
    random state as it was.
    """

    def measure(key: str) -> tuple[float, float, float]:
        block = blocks[key]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = build_planned_block(block, act, num_classes)
            return time_module(module, block.in_shape, settings)

    return measure


class LatencyPredictor:
    """Predicted latency (ms) of architectures from a :class:`LatencyTable`, measuring missing parts on demand.

    Args:
        builder: the candidates' skeleton and data shape.
        table: the table (loaded from its file when it exists).
    """

    def __init__(self, builder: CandidateBuilder, table: LatencyTable) -> None:
        self.builder = builder
        self.table = table
        self.act = str(builder.skeleton.get("act", "relu"))

    def ensure(self, blocks: Mapping[str, PlannedBlock]) -> int:
        """Measure the ``blocks`` the table lacks; return how many were measured."""
        measure = block_measure_fn(blocks, self.table.settings, self.act, self.builder.num_classes)
        return self.table.ensure(blocks, measure)

    def keys(self, arch: Architecture | Mapping[str, Any]) -> list[str]:
        """The table keys of ``arch``'s parts, in forward order (a repeated layer appears once per repeat)."""
        return [block.key for block in self.builder.plan(arch)]

    def __call__(self, arch: Architecture | Mapping[str, Any]) -> float:
        """Predicted latency of ``arch``: the sum of its parts' medians (missing parts are measured first)."""
        plan = self.builder.plan(arch)
        self.ensure({block.key: block for block in plan})
        return self.table.predict(block.key for block in plan)


def measure_architectures(
    builder: CandidateBuilder,
    archs: Sequence[Architecture | Mapping[str, Any]],
    settings: LatencySettings,
    rounds: int = 3,
) -> list[dict[str, float]]:
    """Whole-network latency of each architecture, measured round-robin ``rounds`` times (drift spreads evenly).

    Returns, per architecture, the median over rounds of each round's median (``median_ms``) and the lowest
    and highest round medians (``low_ms``/``high_ms``).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    medians: list[list[float]] = [[] for _ in archs]
    with torch.random.fork_rng(devices=[]):  # leave the global random state as it was
        torch.manual_seed(0)
        models = [builder.build(arch) for arch in archs]
        for _ in range(rounds):
            for i, model in enumerate(models):
                medians[i].append(time_module(model, builder.input_shape, settings)[0])
    return [
        {"median_ms": statistics.median(values), "low_ms": min(values), "high_ms": max(values)}
        for values in medians
    ]


def compare_predicted_measured(
    predictor: LatencyPredictor,
    archs: Sequence[Architecture | Mapping[str, Any]],
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Table-predicted vs measured latency of whole networks (same settings as the table).

    Returns one row per architecture: ``arch`` (dict), ``predicted_ms``, ``measured_ms`` (and its round
    range ``low_ms``/``high_ms``) and ``rel_error = predicted / measured − 1``.
    """
    predicted = [predictor(arch) for arch in archs]
    measured = measure_architectures(predictor.builder, archs, predictor.table.settings, rounds)
    rows = []
    for arch, pred, meas in zip(archs, predicted, measured, strict=True):
        stages = arch.to_dict() if isinstance(arch, Architecture) else dict(arch)
        rows.append(
            {
                "arch": stages,
                "predicted_ms": pred,
                "measured_ms": meas["median_ms"],
                "low_ms": meas["low_ms"],
                "high_ms": meas["high_ms"],
                "rel_error": pred / meas["median_ms"] - 1.0,
            }
        )
    return rows
