"""A tiny image task and a small CNN shared by the structured pruning tests and their DDP script."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.modules import ClassificationModule


def image_data(n: int = 128, batch_size: int = 32, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    y = (x[:, 0, :6].mean((1, 2)) > x[:, 0, 6:].mean((1, 2))).long() + 2 * (
        x[:, 0, :, :6].mean((1, 2)) > 0
    ).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def small_cnn(norm: bool = True) -> nn.Module:
    """conv-BN-ReLU-pool ×2, flatten, linear-ReLU-linear; ``norm=False`` drops the batch norms (DDP on CPU
    cannot synchronize them, so only a model without them trains identically on 1 and 2 processes)."""
    bn: type[nn.Module] = nn.BatchNorm2d if norm else nn.Identity
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        bn(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 24, 3, padding=1),
        bn(24),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24 * 3 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def cnn_module(seed: int = 0, model: nn.Module | None = None, scheduler: bool = True) -> ClassificationModule:
    torch.manual_seed(seed)
    net = model if model is not None else small_cnn()
    return ClassificationModule(
        net,
        num_classes=4,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.7) if scheduler else None,
        input_shape=(1, 12, 12),
    )


def cnn_trainer(callbacks: list[Callback], max_epochs: int = 4, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
    }
    options.update(kwargs)
    return Trainer(callbacks=callbacks, **options)
