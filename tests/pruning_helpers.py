"""A tiny classification task shared by the pruning tests and the DDP script."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.modules import ClassificationModule


def tiny_data(n: int = 256, batch_size: int = 32, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 4, generator=g)
    y = (x @ w).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class NoisySGD(torch.optim.SGD):
    """An optimizer outside MagnitudePruning's zero-preserving set: it moves every weight, zero or not."""

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(1e-3)
        return loss


def tiny_module(seed: int = 0, optimizer: str = "sgd") -> ClassificationModule:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt: Any
    if optimizer == "sgd":
        opt = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    elif optimizer == "noisy":
        opt = partial(NoisySGD, lr=0.05, momentum=0.9)
    else:
        opt = partial(torch.optim.AdamW, lr=0.01, weight_decay=1e-2)
    return ClassificationModule(model, num_classes=4, optimizer=opt, input_shape=(20,))


def tiny_trainer(callbacks: list[Callback], max_epochs: int = 4, **kwargs: Any) -> Trainer:
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
