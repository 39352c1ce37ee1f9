"""Helpers shared by the benchmarks: seeding, a quiet CPU Trainer, statistics, the environment, output files.

Every benchmark writes ``<stem>.json`` (all raw numbers and the setup), ``<stem>.md`` (definitions, setup,
tables) and optionally ``<stem>.png`` into ``--out`` (default ``benchmarks/results/``); a ``--quick`` smoke
run writes ``<stem>_quick.*`` instead so that it never overwrites the committed results.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import platform
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import lightning
import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from effdl_lightning.core.selection import select_modules

RESULTS = Path(__file__).resolve().parent / "results"

#: the definitions of shared/BENCHMARKS.md, quoted in every Markdown result that uses them
DEFINITIONS: dict[str, str] = {
    "compression": "**Compression ratio** = all parameters (weights, biases, norm layers) / nonzero parameters.",
    "macs": "**MACs** = multiply-accumulates of one forward pass at the stated input size (conv: "
    "Cin/groups·Cout·kh·kw·Hout·Wout; linear: in·out); effective MACs scale each layer by its nonzero "
    "fraction.",
    "timing": "**Times** are measured in one process, variants interleaved (A/B/C…), warm-up excluded; "
    "median and interquartile range (p25–p75); ratios are taken between medians measured in the same run.",
    "seeds": "**Seeds**: mean ± std is the sample standard deviation over seeds (not over batches).",
}


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (and dataloader workers) without printing."""
    pl.seed_everything(seed, workers=True, verbose=False)


def quiet() -> None:
    """Silence Lightning's info logs and the warnings that are expected in a CPU benchmark."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*treespec.*",
        ".*but have no `val_dataloader`.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU ``Trainer`` with no logger, checkpointing, progress bar, model summary or sanity check.

    ``kwargs`` override or extend the defaults (e.g. ``max_epochs``, ``callbacks``, ``limit_train_batches``).
    """
    quiet()
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def layer_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weight of every conv/linear layer (what pruning selects by default), keyed ``<module>.weight``.

    For a layer pruned by ``torch.nn.utils.prune`` (Lightning's ``ModelPruning``) it is the effective
    ``weight_orig * weight_mask``. Detached.
    """
    out: dict[str, Tensor] = {}
    for name, module in select_modules(model, None, None).items():
        if hasattr(module, "weight_mask"):
            weight = cast(Tensor, module.weight_orig) * cast(Tensor, module.weight_mask)
        else:
            weight = cast(Tensor, module.weight)
        out[f"{name}.weight"] = weight.detach()
    return out


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "p25", "p75", "mean", "n"}`` of ``values`` (inclusive quartiles)."""
    data = list(values)
    if not data:
        return {"median": math.nan, "p25": math.nan, "p75": math.nan, "mean": math.nan, "n": 0}
    q = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else [data[0]] * 3
    return {"median": q[1], "p25": q[0], "p75": q[2], "mean": statistics.fmean(data), "n": len(data)}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    data = list(values)
    return statistics.fmean(data), statistics.stdev(data) if len(data) > 1 else 0.0


def environment(threads: int | None = None) -> dict[str, Any]:
    """Versions, machine and torch threads, for the ``meta`` block of every result."""
    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "cpus": multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,
    }


def output_stem(name: str, quick: bool) -> str:
    """File stem of a benchmark's results: ``name`` or ``name_quick``."""
    return f"{name}_quick" if quick else name


def write_results(
    out: Path,
    stem: str,
    result: dict[str, Any],
    markdown: str,
    figure: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and (when ``figure`` is given) ``<stem>.png`` into ``out``.

    ``figure`` is called with the PNG path and draws it. Returns the written paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    paths[1].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    if figure is not None:
        paths.append(out / f"{stem}.png")
        figure(paths[-1])
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """Markdown table lines; ``align`` is one character per column (``l`` or ``r``, default ``l`` first)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def command_line(name: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run of benchmark ``name`` with ``argv``."""
    return " ".join(["python -m benchmarks --only", name, *argv])
