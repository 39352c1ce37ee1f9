"""ClassificationModule: any nn.Module trains, metrics are named as documented, arguments are checked."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.modules import ClassificationModule


def _loader(n: int = 64, classes: int = 5, features: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, features, generator=g) * 0.1
    x[torch.arange(n), y] += 2.0  # linearly separable
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(**kwargs: object) -> Trainer:
    defaults: dict[str, object] = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    defaults.update(kwargs)
    return Trainer(**defaults)  # type: ignore[arg-type]


def test_trains_any_module_and_logs_named_metrics() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    module = ClassificationModule(model, num_classes=5, optimizer=partial(torch.optim.Adam, lr=0.05))
    trainer = _trainer()
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(seed=1))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5"):
        assert key in metrics, key
    assert float(metrics["val/acc"]) > 0.9
    assert float(metrics["val/acc_top5"]) >= float(metrics["val/acc"])
    (result,) = trainer.test(module, dataloaders=_loader(seed=2), verbose=False)
    assert result["test/acc"] > 0.9 and "test/acc_top5" in result


def test_no_top5_below_five_classes_and_scheduler_steps() -> None:
    model = nn.Linear(8, 3)
    module = ClassificationModule(
        model,
        num_classes=3,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        input_shape=(8,),
    )
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, train_dataloaders=_loader(classes=3), val_dataloaders=_loader(classes=3))
    assert "val/acc_top5" not in trainer.callback_metrics
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)
    assert module.example_input_array.shape == (1, 8)


def test_default_optimizer_is_sgd() -> None:
    module = ClassificationModule(nn.Linear(4, 2), num_classes=2)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_wrong_logit_shape_is_a_clear_error() -> None:
    module = ClassificationModule(nn.Linear(8, 4), num_classes=5)
    with pytest.raises(ValueError, match=r"logits of shape \(16, 4\); expected \(batch, 5\)"):
        module.training_step(next(iter(_loader())), 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "not a module"}, TypeError, "must be a torch.nn.Module, got str"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be >= 2, got 1"),
        ({"scheduler_interval": "batch"}, ValueError, r"one of \('epoch', 'step'\), got 'batch'"),
        ({"label_smoothing": 1.0}, ValueError, r"`label_smoothing` must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {"model": nn.Linear(2, 2), "num_classes": 2}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ClassificationModule(**args)  # type: ignore[arg-type]
