"""Before → after report of what the model costs, logged under ``compress/*``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model


class CompressionReport(Callback):
    """Profile the model at fit start and fit end, log ``compress/*`` and print a before → after table.

    The metrics follow ``shared/BENCHMARKS.md``: parameters (weights, biases, norm layers), nonzero
    parameters, sparsity, compression ratio (all / nonzero), MACs and effective MACs of one forward pass at
    batch 1, bytes of the saved state dict and, when ``latency=True``, eager latency (median ms) at each
    batch size. Every compression technique shows its effect through this report.

    The profiled network is ``pl_module.student`` or ``pl_module.model`` when the LightningModule has one,
    else the LightningModule itself. The input shape comes from ``input_shape``, else the module's
    ``example_input_array``, else the datamodule's ``input_shape``.

    Args:
        input_shape: input shape without the batch dimension; ``None`` to infer it (see above).
        latency: also measure latency (costs seconds; off by default to keep fits fast).
        batch_sizes: batch sizes at which latency is measured.
        print_table: print the before → after table at fit end (rank zero only).
    """

    def __init__(
        self,
        input_shape: Sequence[int] | None = None,
        latency: bool = False,
        batch_sizes: Sequence[int] = (1, 64),
        print_table: bool = True,
    ) -> None:
        if input_shape is not None and (len(input_shape) == 0 or any(int(d) < 1 for d in input_shape)):
            raise MisconfigurationException(
                f"`input_shape` must be a non-empty sequence of positive ints, got {input_shape!r}"
            )
        if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
            raise MisconfigurationException(f"`batch_sizes` must be positive ints, got {batch_sizes!r}")
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.latency = latency
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.print_table = print_table
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def _resolve_input_shape(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[int, ...]:
        if self.input_shape is not None:
            return self.input_shape
        example = getattr(pl_module, "example_input_array", None)
        if example is not None and hasattr(example, "shape"):
            return tuple(int(d) for d in example.shape[1:])
        datamodule = getattr(trainer, "datamodule", None)
        shape = getattr(datamodule, "input_shape", None)
        if shape is not None:
            return tuple(int(d) for d in shape)
        raise MisconfigurationException(
            "CompressionReport cannot tell the input shape: pass `input_shape=(C, H, W)`, set "
            "`example_input_array` on the LightningModule, or use a datamodule with an `input_shape` attribute."
        )

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Profile the model now and return its ``compress/*`` metrics."""
        from effdl_lightning.measure import profile

        model: nn.Module = target_model(pl_module)
        result = profile(
            model,
            self._resolve_input_shape(trainer, pl_module),
            latency=self.latency,
            batch_sizes=self.batch_sizes,
            device=pl_module.device,
        )
        return result.as_metrics(prefix="compress/")

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed fit keeps the "before" of the original run (restored by load_state_dict)
        if not self.before:
            self.before = self.measure(trainer, pl_module)
        self._log(trainer, self.before)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after = self.measure(trainer, pl_module)
        self._log(trainer, self.after)
        if self.print_table:
            _print(format_report(self.before, self.after))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"before": dict(self.before)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = dict(state_dict.get("before", {}))


@rank_zero_only
def _print(text: str) -> None:
    print(text, flush=True)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}"


def format_report(before: dict[str, float], after: dict[str, float]) -> str:
    """Render two ``compress/*`` metric dicts as a plain-text before → after table."""
    keys = list(dict.fromkeys([*before, *after]))
    rows = [(k.removeprefix("compress/"), _fmt(before.get(k)), _fmt(after.get(k))) for k in keys]
    change = []
    for k in keys:
        b, a = before.get(k), after.get(k)
        change.append(f"{a / b:.3g}x" if a is not None and b not in (None, 0) else "-")
    header = ("metric", "before", "after", "after/before")
    table = [header, *[(*r, c) for r, c in zip(rows, change, strict=True)]]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["Compression report (MACs at batch 1; size = bytes of the saved state dict)"]
    for i, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
