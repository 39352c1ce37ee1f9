"""Write the Deep Compression file at fit end and report its exact storage (Han et al., arXiv 1510.00149)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model


class DeepCompressionExport(Callback):
    """At fit end, store the model as pruned + shared + Huffman-coded weights and log what it costs.

    The file holds every tensor of the target model's state dict: weight matrices and kernels in the
    relative-index sparse format with filler zeros, their codebooks when a ``WeightSharing`` callback of the
    same trainer clustered them, Huffman-coded gaps and cluster indices; everything else raw (see
    :func:`effdl_lightning.export.save_deep_compressed`). The file is read back and compared with the model's
    weights before the result is reported, so the reported storage is that of a file that loads.

    Logs ``compress/storage_bytes`` (the whole file), ``compress/storage_ratio`` (fp32 state / file) and
    prints the per-tensor table (kept fraction, index and value bits, bytes).

    Args:
        path: where to write; ``None`` = ``<trainer.default_root_dir>/model.deepc``.
        index_bits: relative-index bits, one int or per tensor name; ``None`` = the paper's 8 (conv) / 5 (fc);
            ``"auto"`` = the smallest of 2–8 bits per tensor.
        huffman: Huffman-code gaps and cluster indices.
        print_table: print the storage table at fit end (rank zero).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        index_bits: int | Mapping[str, int] | str | None = None,
        huffman: bool = True,
        print_table: bool = True,
    ) -> None:
        if isinstance(index_bits, int) and not 1 <= index_bits <= 16:
            raise MisconfigurationException(f"`index_bits` must be in [1, 16], got {index_bits}")
        if isinstance(index_bits, str) and index_bits != "auto":
            raise MisconfigurationException(
                f"`index_bits` must be an int, a mapping, None or 'auto', got {index_bits!r}"
            )
        self.path = Path(path) if path is not None else None
        self.index_bits: int | dict[str, int] | str | None = (
            dict(index_bits) if isinstance(index_bits, Mapping) else index_bits
        )
        self.huffman = huffman
        self.print_table = print_table
        self.report: Any = None
        self.written: Path | None = None

    @staticmethod
    def _codebooks(trainer: pl.Trainer) -> dict[str, tuple[Tensor, Tensor]]:
        books: dict[str, tuple[Tensor, Tensor]] = {}
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            get = getattr(callback, "codebooks", None)
            if callable(get) and callback is not None:
                books.update(get())
        return books

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._export(trainer, pl_module)

    @rank_zero_only
    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from effdl_lightning.export import load_deep_compressed, save_deep_compressed

        model = target_model(pl_module)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise RuntimeError(
                f"DeepCompressionExport: training diverged, {bad} hold NaN or inf; nothing written"
            )
        path = self.path or Path(trainer.default_root_dir) / "model.deepc"
        report = save_deep_compressed(
            state, path, codebooks=self._codebooks(trainer), index_bits=self.index_bits, huffman=self.huffman
        )
        loaded = load_deep_compressed(path)
        for name, tensor in state.items():
            if not torch.equal(loaded[name], tensor):
                raise RuntimeError(f"the Deep Compression file does not reproduce {name!r}; not reporting it")
        self.report, self.written = report, path
        metrics = {
            "compress/storage_bytes": float(report.file_bytes),
            "compress/storage_ratio": float(report.dense_fp32_bytes / report.file_bytes),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.print_table:
            print(
                f"Deep Compression file {path} ({report.file_bytes:,} bytes)\n{report.to_table()}", flush=True
            )
