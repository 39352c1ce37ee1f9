"""Multi-exit training and early-exit evaluation (MSDNet, arXiv 1703.09844) around any backbone."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from effdl_lightning.core.distill import kd_loss
from effdl_lightning.core.dynamic import (
    DEFAULT_BUDGETS,
    AnytimeResult,
    BudgetPoint,
    EarlyExitOutput,
    MultiExitNetwork,
    anytime_evaluation,
    budget_sweep,
    collect_exit_logits,
    cumulative_exit_macs,
    early_exit_inference,
    num_exits_of,
)
from effdl_lightning.modules.classification import OptimizerFactory, SchedulerFactory

__all__ = ["EarlyExitModule"]

log = logging.getLogger(__name__)

_INTERVALS = ("epoch", "step")
_STAGES = ("train", "val", "test")
_CKPT_KEY = "early_exit_thresholds"


class EarlyExitModule(LightningModule):
    """Train a network with several exits, evaluate it as MSDNet does, and run it with real early exit.

    The network is ``model`` with :class:`~effdl_lightning.core.dynamic.ExitHead` classifiers attached at the
    module paths ``exits`` (forward hooks; the backbone's own output is the last exit), or, with
    ``exits=None``, a model that already returns one logits per exit (``effdl_lightning.models.MSDNet``).
    It is ``self.model`` (compression callbacks and ``CompressionReport`` act on it, heads included).

    **Objective** (MSDNet, arXiv 1703.09844, §4: ``Σ_k CE_k``; optional self-distillation of the last exit
    into the earlier ones, Zhang et al. 2019, "Be Your Own Teacher", arXiv 1905.08094)::

        L = Σ_k w_k · CE(z_k, y) + λ · Σ_{k<K} T² · KL(softmax(z_K / T) ‖ softmax(z_k / T))

    with ``z_K`` detached in the KL terms. **Logs** ``{train,val,test}/loss`` (``L``),
    ``{stage}/loss_exit{k}`` (``CE_k``), ``{stage}/acc_exit{k}`` for ``k = 1..K``, ``{stage}/acc`` (the last
    exit, so checkpoints and sweeps watching ``val/acc`` see the full network) and ``train/loss_distill``.

    **Evaluation.** :meth:`anytime_evaluation` gives each exit's accuracy and cumulative MACs;
    :meth:`budgeted_evaluation` fits confidence thresholds on validation data per budget and reports the
    test accuracy and average MACs (budgeted batch classification); :meth:`early_exit_predict` runs the
    network stage by stage with thresholds, dropping the samples that exit. ``predict_step`` uses
    ``self.thresholds`` when set (saved in checkpoints), else the last exit.

    Args:
        model: the backbone (with ``exits``) or a model returning a list of logits (``exits=None``).
        num_classes: number of classes.
        exits: module paths of ``model.named_modules()`` where exits attach, shallow to deep (e.g.
            ``["layer1", "layer2"]``), or ``None``.
        exit_weights: ``w_k`` per exit (``K`` values ``>= 0``, not all 0); default all 1.
        distill_weight: ``λ >= 0`` of the self-distillation terms (0: off).
        temperature: ``T > 0`` of the self-distillation.
        head_channels: width of each attached head's strided 3×3 convolution (0: pooling + linear only).
        optimizer: factory ``params -> Optimizer`` (Hydra ``_partial_: true``); default SGD(lr=0.1,
            momentum=0.9).
        scheduler: optional factory ``optimizer -> LR scheduler``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        input_shape: input without batch; needed to build attached heads and to count MACs.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        exits: Sequence[str] | None = None,
        exit_weights: Sequence[float] | None = None,
        distill_weight: float = 0.0,
        temperature: float = 4.0,
        head_channels: int = 0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or isinstance(model, LightningModule):
            raise TypeError(
                f"`model` must be a torch.nn.Module (not a LightningModule), got {type(model).__name__}"
            )
        if int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        if not float(distill_weight) >= 0:
            raise ValueError(
                f"`distill_weight` must be >= 0 (0 = no self-distillation), got {distill_weight}"
            )
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if int(head_channels) < 0:
            raise ValueError(f"`head_channels` must be >= 0 (0 = pooling + linear), got {head_channels}")
        if scheduler_interval not in _INTERVALS:
            raise ValueError(f"`scheduler_interval` must be one of {_INTERVALS}, got {scheduler_interval!r}")
        # plain types only, so that checkpoints load with weights_only=True
        shape = input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        if exits is not None:
            if isinstance(exits, str) or not isinstance(exits, Sequence) or not exits:
                raise ValueError(f"`exits` must be a non-empty list of module paths or None, got {exits!r}")
            exits = [str(p) for p in exits]
            if shape is None:
                raise ValueError(
                    f"`input_shape` is needed to build the exit heads at {exits} (their width comes from one "
                    f"forward pass); pass e.g. input_shape=(1, 28, 28)"
                )
        exit_weights = [float(w) for w in exit_weights] if exit_weights is not None else None
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.num_classes = int(num_classes)
        self.input_shape = shape
        self.model: nn.Module
        if exits is not None:
            assert shape is not None
            self.model = MultiExitNetwork(model, exits, self.num_classes, shape, int(head_channels))
            self.num_exits = len(exits) + 1
        else:
            self.model = model
            self.num_exits = self._count_exits(model, shape)
        weights = exit_weights if exit_weights is not None else [1.0] * self.num_exits
        if len(weights) != self.num_exits or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"`exit_weights` must be {self.num_exits} values >= 0 (one per exit), not all 0; got {weights}"
            )
        self.exit_weights = weights
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        #: thresholds θ_1..θ_{K-1} that ``predict_step`` uses (e.g. ``budgeted_evaluation(...)[i].thresholds``)
        self.thresholds: list[float] | None = None
        if shape is not None:
            self.example_input_array = torch.zeros(1, *shape)
        for stage in _STAGES:
            accs = [MulticlassAccuracy(self.num_classes, average="micro") for _ in range(self.num_exits)]
            setattr(self, f"{stage}_exit_acc", nn.ModuleList(accs))
            setattr(self, f"{stage}_acc", MulticlassAccuracy(self.num_classes, average="micro"))

    def _count_exits(self, model: nn.Module, shape: tuple[int, ...] | None) -> int:
        declared = num_exits_of(model)
        if shape is None:
            if declared is None:
                raise ValueError(
                    f"cannot tell how many exits {type(model).__name__} has: give it a `num_exits` attribute, "
                    f"pass `input_shape` (one probing forward pass counts its logits) or attach `exits`"
                )
            return declared
        param = next(model.parameters(), None)
        flags = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, *shape, device=param.device if param is not None else None))
        finally:
            for module, flag in flags.items():
                module.training = flag
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if declared is not None and len(outs) != declared:
            raise ValueError(
                f"{type(model).__name__} returned {len(outs)} logits but declares num_exits={declared} "
                f"(an MSDNet must have output='all')"
            )
        if len(outs) == 1:
            log.warning(
                "EarlyExitModule: %s returns one logits tensor and `exits` is None: a single exit, no early "
                "exit; pass exits=[module paths] to attach classifiers",
                type(model).__name__,
            )
        return len(outs)

    # --- the objective -------------------------------------------------------------------------------------------
    @override
    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.model(x)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(outs) != self.num_exits:
            raise ValueError(
                f"the model returned {len(outs)} logits; expected one per exit ({self.num_exits})"
            )
        for k, z in enumerate(outs):
            if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.num_classes:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"exit {k + 1} returned {got}; expected logits (batch, {self.num_classes})")
        return outs

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        ces = [F.cross_entropy(z, y) for z in logits]
        total = sum((w * ce for w, ce in zip(self.exit_weights, ces, strict=True)), logits[0].new_zeros(()))
        if self.distill_weight > 0 and self.num_exits > 1:
            teacher = logits[-1]
            distill = sum(
                (kd_loss(z, teacher, temperature=self.temperature, alpha=1.0) for z in logits[:-1]),
                logits[0].new_zeros(()),
            )
            total = total + self.distill_weight * distill
            self.log(
                f"{stage}/loss_distill", distill, on_step=False, on_epoch=True, sync_dist=stage != "train"
            )
        on_step = stage == "train"
        sync = not on_step
        accs: list[MulticlassAccuracy] = list(getattr(self, f"{stage}_exit_acc"))
        for k, (z, ce) in enumerate(zip(logits, ces, strict=True)):
            accs[k](z, y)
            self.log(f"{stage}/loss_exit{k + 1}", ce, on_step=False, on_epoch=True, sync_dist=sync)
            self.log(f"{stage}/acc_exit{k + 1}", accs[k], on_step=False, on_epoch=True)
        acc = getattr(self, f"{stage}_acc")
        acc(logits[-1], y)
        self.log(
            f"{stage}/loss", total, on_step=on_step, on_epoch=True, prog_bar=stage != "test", sync_dist=sync
        )
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return total

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if self.thresholds is not None:
            return self.early_exit_predict(x).predictions
        return self(x)[-1].argmax(dim=1)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
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

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_CKPT_KEY] = list(self.thresholds) if self.thresholds is not None else None

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(_CKPT_KEY)
        self.thresholds = [float(t) for t in stored] if stored is not None else None

    # --- evaluation ----------------------------------------------------------------------------------------------
    def _shape(self) -> tuple[int, ...]:
        shape = self.input_shape or getattr(getattr(self._trainer, "datamodule", None), "input_shape", None)
        if shape is None:
            raise ValueError(
                "counting MACs needs the input shape: build the module with `input_shape=(C, H, W)`"
            )
        return tuple(int(d) for d in shape)

    def exit_macs(self) -> list[int]:
        """Cumulative MACs ``C_k`` of one sample leaving at each exit (conv and linear, batch 1)."""
        return cumulative_exit_macs(self.model, self._shape())

    def anytime_evaluation(self, loader: Iterable[Any]) -> AnytimeResult:
        """Anytime prediction (arXiv 1703.09844, §4): each exit's accuracy on ``loader`` and its MACs."""
        return anytime_evaluation(self.model, loader, self._shape())

    def budgeted_evaluation(
        self,
        val_loader: Iterable[Any],
        test_loader: Iterable[Any],
        budgets: Iterable[float | Sequence[float]] = DEFAULT_BUDGETS,
    ) -> list[BudgetPoint]:
        """Budgeted batch classification (arXiv 1703.09844, §4): per budget, thresholds fitted on
        ``val_loader`` so that the requested fractions exit at each stage, then accuracy and average MACs
        on ``test_loader``.

        Args:
            val_loader: ``(x, y)`` batches the thresholds are fitted on.
            test_loader: ``(x, y)`` batches the budgets are evaluated on.
            budgets: each a geometric parameter ``p`` (fractions ``q_k ∝ p^k``; default the authors' sweep
                ``p = 0.05 .. 2.0``) or explicit fractions ``q_1..q_K`` summing to 1.
        """
        val = collect_exit_logits(self.model, val_loader)
        test = collect_exit_logits(self.model, test_loader)
        return budget_sweep(val, test, self.exit_macs(), budgets)

    def early_exit_predict(
        self, x: Tensor, thresholds: float | Sequence[float] | None = None
    ) -> EarlyExitOutput:
        """Classify ``x`` with real early exit: stage ``k`` runs only on the samples still present.

        Args:
            x: a batch of inputs.
            thresholds: ``θ_1..θ_{K-1}`` (or one number) on the max softmax; default ``self.thresholds``.
        """
        chosen = thresholds if thresholds is not None else self.thresholds
        if chosen is None:
            raise ValueError(
                "no thresholds: pass `thresholds` or set `module.thresholds` (e.g. from budgeted_evaluation)"
            )
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            return early_exit_inference(self.model, x.to(self.device), chosen)
        finally:
            for module, flag in flags.items():
                module.training = flag
