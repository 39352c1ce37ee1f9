"""SkipNet training around any ResNet-style model: supervised gates, then hybrid reinforcement learning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from effdl_lightning.core.dynamic.gating import (
    GATE_INITS,
    GATE_KINDS,
    GatedResidual,
    MacsTable,
    gate_,
    macs_table,
    reinforce_loss,
    set_gate_mode_,
    skip_ratio,
)
from effdl_lightning.modules.classification import ClassificationModule, OptimizerFactory, SchedulerFactory

__all__ = ["SkipNetModule"]

_STAGES = ("train", "val", "test")


class SkipNetModule(ClassificationModule):
    """Train a ResNet-style classifier with SkipNet gates (Wang et al., arXiv 1711.09485).

    At construction every residual block of ``model`` whose forward is ``act(F(x) + shortcut(x))`` and whose
    shortcut keeps the shape is wrapped in place by :func:`effdl_lightning.core.dynamic.gate_`:
    ``x' = act(g·F(x) + shortcut(x))``. Training has two phases:

    * **supervised** (epochs ``< rl_start_epoch``, or always when it is ``None``): hard gates
      ``g = 1[σ(z) ≥ ½]`` with a straight-through gradient, loss ``CE``;
    * **hybrid** (epochs ``≥ rl_start_epoch``; 0 = from the start): sampled gates ``g ~ Bernoulli(σ(z))``,
      loss ``CE + λ·L_RL`` with the REINFORCE term of :func:`~effdl_lightning.core.dynamic.reinforce_loss`
      (skip reward ``α/B`` per skipped gate, terminal reward ``−CE``, discount ``γ``).

    Validation, test and prediction use deterministic gates and really skip: a block's branch runs only on
    the samples whose gate is open. Logs what :class:`ClassificationModule` logs plus ``{stage}/skip_ratio``
    (fraction of (sample, gated block) pairs skipped), ``{stage}/avg_macs`` (average MACs per sample actually
    executed: always-on layers and gates plus each gated branch times the fraction of samples running it;
    in training the decisions are counted though every branch is computed), ``train/rl_loss`` and
    ``train/hybrid`` (1 in the hybrid phase). Checkpoints carry the torch RNG state (CPU, and CUDA when in use)
    so that ``fit(ckpt_path=...)`` samples the same gates as an uninterrupted run.

    Args:
        model: the network, changed in place (its residual blocks get gates).
        num_classes: number of classes.
        alpha: skip reward ``α ≥ 0`` (the paper sweeps 0.1, 0.01, 0.001: larger skips more).
        rl_start_epoch: first epoch of the hybrid RL phase; ``None`` = supervised only.
        rl_weight: ``λ ≥ 0``, weight of the REINFORCE term. The reference code sums over the batch with
            0.01; this mean over the batch with λ = 1 is about that at batch 128.
        gamma: discount ``0 < γ ≤ 1`` of the gates' returns (1 in the paper's CIFAR runs).
        gate: gate kind: ``"conv"`` (FFGate-II: 3×3 stride-2 conv, BN, ReLU, pool, linear) or ``"linear"``.
        gate_init: ``"random"`` (the reference code's: gates start near ½, some blocks skipped from the first
            step, so the network learns to do without them) or ``"open"`` (every gate starts open: the gated
            model starts as the plain one, for gating a trained network). See
            :class:`~effdl_lightning.core.dynamic.SkipGate`.
        include: glob patterns of block names to gate (default: every candidate block).
        exclude: glob patterns of block names to leave ungated.
        gate_lr: learning rate of the gates' parameters (a second parameter group); ``None`` = the
            optimizer's.
        optimizer: factory ``params -> Optimizer`` (default SGD(lr=0.1, momentum=0.9)).
        scheduler: optional factory ``optimizer -> LR scheduler``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        input_shape: input shape without batch (``example_input_array``; also sizes the MACs table, which is
            otherwise counted on the first batch).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        alpha: float = 0.01,
        rl_start_epoch: int | None = None,
        rl_weight: float = 1.0,
        gamma: float = 1.0,
        gate: str = "conv",
        gate_init: str = "random",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        gate_lr: float | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        input_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if not float(alpha) >= 0:
            raise ValueError(f"`alpha` must be >= 0, got {alpha}")
        if rl_start_epoch is not None and int(rl_start_epoch) < 0:
            raise ValueError(f"`rl_start_epoch` must be >= 0 or None (supervised only), got {rl_start_epoch}")
        if not float(rl_weight) >= 0:
            raise ValueError(f"`rl_weight` must be >= 0, got {rl_weight}")
        if not 0.0 < float(gamma) <= 1.0:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}")
        if gate not in GATE_KINDS:
            raise ValueError(f"`gate` must be one of {GATE_KINDS}, got {gate!r}")
        if gate_init not in GATE_INITS:
            raise ValueError(f"`gate_init` must be one of {GATE_INITS}, got {gate_init!r}")
        if gate_lr is not None and not float(gate_lr) > 0:
            raise ValueError(f"`gate_lr` must be > 0 or None (the optimizer's), got {gate_lr}")
        # plain types only, so that checkpoints load with weights_only=True
        alpha, rl_weight, gamma = float(alpha), float(rl_weight), float(gamma)
        rl_start_epoch = int(rl_start_epoch) if rl_start_epoch is not None else None
        include = [str(p) for p in include] if include is not None else None
        exclude = [str(p) for p in exclude] if exclude is not None else None
        gate_lr = float(gate_lr) if gate_lr is not None else None
        gate_(model, include=include, exclude=exclude, kind=gate, init=gate_init)
        super().__init__(
            model,
            num_classes,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor,
            input_shape=input_shape,
        )
        self.alpha = alpha
        self.rl_start_epoch = rl_start_epoch
        self.rl_weight = rl_weight
        self.gamma = gamma
        self.gate_lr = gate_lr
        for stage in _STAGES:  # epoch means weighted by batch size (synchronized under DDP)
            setattr(self, f"{stage}_skip_ratio", MeanMetric())
            setattr(self, f"{stage}_avg_macs", MeanMetric())
        self._macs: MacsTable | None = None

    @property
    def gates(self) -> dict[str, GatedResidual]:
        """``{name: GatedResidual}`` of the model (names relative to ``model``)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, GatedResidual)}

    @property
    def hybrid(self) -> bool:
        """Whether the current epoch is in the hybrid RL phase."""
        return self.rl_start_epoch is not None and self.current_epoch >= self.rl_start_epoch

    def _log_dynamic(self, stage: str, x: torch.Tensor) -> None:
        gates = self.gates
        if self._macs is None:
            example = x[:1] if self.input_shape is None else self.example_input_array.to(x)  # type: ignore[union-attr]
            self._macs = macs_table(self.model, example)
        n = x.shape[0]
        executed = {
            name: float(b.last_gate.float().mean()) if b.last_gate is not None else 1.0
            for name, b in gates.items()
        }
        skip = getattr(self, f"{stage}_skip_ratio")
        macs = getattr(self, f"{stage}_avg_macs")
        skip(skip_ratio(list(gates.values())), weight=n)
        macs(self._macs.executed(executed), weight=n)
        self.log(f"{stage}/skip_ratio", skip, on_step=False, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}/avg_macs", macs, on_step=False, on_epoch=True)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        hybrid = self.hybrid
        set_gate_mode_(self.model, "sample" if hybrid else "hard")
        logits = self(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = per_sample.mean()
        self.log("train/hybrid", float(hybrid), on_step=False, on_epoch=True)
        if hybrid:
            blocks = [b for b in self.gates.values() if b.last_log_prob is not None]
            rl = reinforce_loss(
                [b.last_log_prob for b in blocks],  # type: ignore[misc]
                [b.last_gate for b in blocks],  # type: ignore[misc]
                per_sample,
                self.alpha,
                self.gamma,
            )
            loss = loss + self.rl_weight * rl
            self.log("train/rl_loss", rl, on_step=True, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.train_acc(logits, y)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self._log_dynamic("train", x)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "val")
        self._log_dynamic("val", batch[0])
        return loss

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "test")
        self._log_dynamic("test", batch[0])
        return loss

    # --- checkpoints: the RNG that samples the gates, so that a resumed hybrid phase samples the same gates -----
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipnet_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["skipnet_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("skipnet_rng")
        if state is None:
            return
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        groups: Any = params
        gate_ids = {id(p) for b in self.gates.values() for p in b.gate.parameters()}
        if self.gate_lr is not None and gate_ids:
            groups = [
                {"params": [p for p in params if id(p) not in gate_ids]},
                {"params": [p for p in params if id(p) in gate_ids], "lr": self.gate_lr},
            ]
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        config: OptimizerLRSchedulerConfig = {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer),
                "interval": self.scheduler_interval,
                "monitor": self.scheduler_monitor,
            },
        }
        return config
