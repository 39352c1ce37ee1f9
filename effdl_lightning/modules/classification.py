"""Supervised classification around any ``nn.Module``: the module every technique plugs into."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_INTERVALS = ("epoch", "step")


class ClassificationModule(LightningModule):
    """Train, validate and test any classifier ``nn.Module`` with cross-entropy.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` and, when there
    are at least 5 classes, ``val/acc_top5`` and ``test/acc_top5`` (micro-averaged accuracy, i.e. the fraction
    of correctly classified samples).

    Args:
        model: any module mapping a batch of inputs to logits of shape ``(N, num_classes)``: one of
            ``effdl_lightning.models``, a user's, or ``torchvision.models.*`` where installed.
        num_classes: number of classes of the data.
        optimizer: a factory ``params -> Optimizer`` (Hydra: ``_partial_: true``); default SGD(lr=0.1,
            momentum=0.9).
        scheduler: an optional factory ``optimizer -> LR scheduler`` (Hydra: ``_partial_: true``).
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        label_smoothing: label smoothing of the cross-entropy (0 disables it).
        input_shape: the input shape without batch (e.g. ``(1, 28, 28)``); sets ``example_input_array`` so
            that measurement and summaries know the input size.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        input_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        if scheduler_interval not in _INTERVALS:
            raise ValueError(f"`scheduler_interval` must be one of {_INTERVALS}, got {scheduler_interval!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
        # plain types only (not OmegaConf containers), so that checkpoints load with weights_only=True
        input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.num_classes = int(num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.label_smoothing = float(label_smoothing)
        self.input_shape = input_shape
        if self.input_shape is not None:
            self.example_input_array = torch.zeros(1, *self.input_shape)
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")
        if self.num_classes >= 5:
            self.val_acc_top5 = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
            self.test_acc_top5 = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returned logits of shape {tuple(logits.shape)}; expected (batch, {self.num_classes})"
            )
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        on_step = stage == "train"
        # val/test losses are averaged over all DDP processes; the training loss stays per process (no
        # all-reduce on every step)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=stage != "test",
            sync_dist=not on_step,
        )
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        if stage != "train" and self.num_classes >= 5:
            top5 = getattr(self, f"{stage}_acc_top5")
            top5(logits, y)
            self.log(f"{stage}/acc_top5", top5, on_step=False, on_epoch=True)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: OptimizerLRSchedulerConfig = {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": self.scheduler_monitor,
            },
        }
        return config
