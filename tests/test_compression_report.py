"""CompressionReport: compress/* metrics at fit start and end, the table, resume, and input-shape errors."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.callbacks import CompressionReport, format_report
from effdl_lightning.modules import ClassificationModule


class _MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class _ZeroHalfOfFirstLayer(Callback):
    """Stands in for a pruning callback: zeroes half of the first Linear's weights at the end of fit."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            w = pl_module.model[0].weight  # type: ignore[index]
            w[: w.shape[0] // 2] = 0.0


def _data() -> DataLoader:
    x = torch.randn(32, 16)
    y = torch.arange(32) % 3
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _module(input_shape: tuple[int, ...] | None = (16,)) -> ClassificationModule:
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return ClassificationModule(
        model, num_classes=3, optimizer=partial(torch.optim.SGD, lr=0.01), input_shape=input_shape
    )


def _trainer(callbacks: list[Callback], logger: Logger | bool = False, **kw: Any) -> Trainer:
    return Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_logs_before_and_after_and_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    module = _module()
    module.model[0].weight.data[0, :] = 0.0  # type: ignore[index]  # 16 zeros before any "pruning"
    report = CompressionReport()
    logger = _MemoryLogger()
    # the zeroing callback runs before the report's on_fit_end
    trainer = _trainer([_ZeroHalfOfFirstLayer(), report], logger=logger)
    trainer.fit(module, train_dataloaders=_data())
    total = 16 * 8 + 8 + 8 * 3 + 3
    assert report.before["compress/params"] == total
    assert report.before["compress/params_nonzero"] == total - 16
    assert report.after["compress/params_nonzero"] == total - 4 * 16
    assert report.after["compress/macs"] == 16 * 8 + 8 * 3
    assert report.after["compress/effective_macs"] == pytest.approx(16 * 8 / 2 + 8 * 3)
    assert report.after["compress/compression_ratio"] == pytest.approx(total / (total - 64))
    logged = [m for _, m in logger.records if "compress/params" in m]
    assert logged == [report.before, report.after]
    out = capsys.readouterr()
    assert "Compression report" in out.out + out.err
    assert "params_nonzero" in format_report(report.before, report.after)


def test_input_shape_from_datamodule_and_missing_shape_error() -> None:
    class _DM(pl.LightningDataModule):
        input_shape = (16,)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.randn(16, 16), torch.arange(16) % 3), batch_size=8)

    report = CompressionReport()
    _trainer([report]).fit(_module(input_shape=None), datamodule=_DM())
    assert report.before["compress/macs"] == 16 * 8 + 8 * 3

    with pytest.raises(MisconfigurationException, match="cannot tell the input shape"):
        _trainer([CompressionReport()]).fit(_module(input_shape=None), train_dataloaders=_data())


def test_latency_is_reported_when_asked() -> None:
    report = CompressionReport(latency=True, batch_sizes=(1, 4))
    _trainer([report]).fit(_module(), train_dataloaders=_data())
    assert report.after["compress/latency_ms_b1"] > 0 and report.after["compress/latency_ms_b4"] > 0


def test_resume_keeps_the_original_before() -> None:
    report = CompressionReport()
    report.load_state_dict({"before": {"compress/params": 123.0}})
    _trainer([report]).fit(_module(), train_dataloaders=_data())
    assert report.before == {"compress/params": 123.0}
    assert report.state_dict() == {"before": {"compress/params": 123.0}}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": ()}, r"`input_shape` must be a non-empty sequence of positive ints, got \(\)"),
        ({"input_shape": (1, 0)}, r"got \(1, 0\)"),
        ({"batch_sizes": (0,)}, r"`batch_sizes` must be positive ints, got \(0,\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        CompressionReport(**kwargs)
