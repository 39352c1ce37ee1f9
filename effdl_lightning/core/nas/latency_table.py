"""A latency lookup table: measured once per block configuration on this machine, summed to predict a model.

MnasNet (arXiv 1807.11626) times every sampled model on the phone; later platform-aware searches
(FBNet, arXiv 1812.03443; ProxylessNAS, arXiv 1812.00332) time each *block configuration* once and predict
a network's latency as the sum over its blocks, which makes a candidate's latency free. This is that table,
kept as JSON::

    {"header": {"machine": ..., "processor": ..., "cpus": ..., "torch": ..., "runtime": "eager",
                "device": "cpu", "threads": 1, "batch_size": 1, "warmup": 10, "repeats": 30, "format": 1},
     "entries": {"<key>": {"median_ms": ..., "p25_ms": ..., "p75_ms": ...}, ...}}

Keys name one configuration (for ``model=mnas_space``: part, block string and input shape, see
:class:`effdl_lightning.models.mnas_space.PlannedBlock`). The table does not know how to build or time a
block: :meth:`LatencyTable.ensure` takes a ``measure(key) -> (median, p25, p75)`` function and calls it only
for the keys it lacks, so a second search with the same header reuses every entry. A file written under a
different header (other machine, torch, threads, batch size, runtime, repetitions) is refused rather than
mixed in. The error between the sum and a whole model's measured latency (Python overhead between blocks,
cache effects) is what :func:`effdl_lightning.nas.latency.compare_predicted_measured` reports.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TABLE_FORMAT = 1
RUNTIMES = ("eager",)

MeasureFn = Callable[[str], tuple[float, float, float]]
"""``measure(key) -> (median_ms, p25_ms, p75_ms)`` of one configuration."""


@dataclass(frozen=True)
class LatencySettings:
    """How entries are timed (part of the header: a table is only reused under the same settings).

    Args:
        batch_size: inputs per forward pass (BENCHMARKS.md: report batch 1 and 64).
        threads: torch intra-op threads during timing.
        runtime: ``eager`` (PyTorch eager mode).
        warmup: untimed runs before timing.
        repeats: timed runs; the median is the entry.
        device: where the blocks run.
    """

    batch_size: int = 1
    threads: int = 1
    runtime: str = "eager"
    warmup: int = 10
    repeats: int = 30
    device: str = "cpu"

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {list(RUNTIMES)}; got {self.runtime!r}")
        if int(self.warmup) < 0:
            raise ValueError(f"warmup must be >= 0; got {self.warmup}")
        if int(self.repeats) < 1:
            raise ValueError(f"repeats must be >= 1; got {self.repeats}")


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.platform()


def machine_header(settings: LatencySettings) -> dict[str, Any]:
    """What identifies a table: this machine, this torch, and ``settings``."""
    return {
        "format": TABLE_FORMAT,
        "machine": f"{platform.system()} {platform.machine()}",
        "processor": _processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        **asdict(settings),
    }


class LatencyTable:
    """Measured latency (ms) per configuration key, loaded from and saved to ``path`` (JSON).

    Args:
        settings: how entries are (or were) timed; with the machine and torch version, the header.
        path: the JSON file; loaded when it exists (its header must match, else ``ValueError`` naming the
            differing fields), written after every :meth:`ensure` that measured something. ``None`` keeps the
            table in memory.
    """

    def __init__(self, settings: LatencySettings, path: str | os.PathLike[str] | None = None) -> None:
        self.settings = settings
        self.header = machine_header(settings)
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, float]] = {}
        self.loaded = 0
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text())
            stored = data.get("header", {})
            differ = sorted(k for k in set(stored) | set(self.header) if stored.get(k) != self.header.get(k))
            if differ:
                detail = ", ".join(
                    f"{k}: {stored.get(k)!r} (file) vs {self.header.get(k)!r} (now)" for k in differ
                )
                raise ValueError(
                    f"latency table {self.path} was measured under other settings ({detail}); "
                    "use another path for these settings, or delete the file to measure again"
                )
            self.entries = {str(k): dict(v) for k, v in data.get("entries", {}).items()}
            self.loaded = len(self.entries)
            log.info("latency table %s: %d entries reused", self.path, self.loaded)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> float:
        """Median ms of ``key``; a missing key raises ``KeyError`` naming it."""
        try:
            return self.entries[key]["median_ms"]
        except KeyError:
            raise KeyError(f"no latency entry for {key!r}; measure it with ensure([...], measure)") from None

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys of ``keys`` not yet in the table, each once, in order."""
        return [k for k in dict.fromkeys(keys) if k not in self.entries]

    def ensure(self, keys: Iterable[str], measure: MeasureFn) -> int:
        """Measure the missing ``keys`` with ``measure`` (only those), save, and return how many were measured."""
        todo = self.missing(keys)
        for key in todo:
            median, p25, p75 = measure(key)
            self.entries[key] = {"median_ms": float(median), "p25_ms": float(p25), "p75_ms": float(p75)}
        if todo:
            self.save()
        return len(todo)

    def predict(self, keys: Iterable[str]) -> float:
        """Predicted latency (ms) of a model made of ``keys`` (repeats count each time): the sum of medians."""
        return float(sum(self[key] for key in keys))

    def save(self) -> None:
        """Write the table to ``path`` (atomically: a temporary file, then a rename); no-op without a path."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        data = {"header": self.header, "entries": dict(sorted(self.entries.items()))}
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.path)
