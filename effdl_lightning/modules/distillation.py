"""Knowledge distillation around any student and teacher: KD, FitNets hints, attention transfer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import Self, override

from effdl_lightning.core.distill import (
    DistillationInputs,
    DistillationLoss,
    FeatureCapture,
    FitNetsLoss,
)
from effdl_lightning.modules.classification import (
    ClassificationModule,
    OptimizerFactory,
    SchedulerFactory,
)
from effdl_lightning.modules.teacher import TeacherSpec, load_teacher

__all__ = ["DistillationModule"]

_INTERVALS = ("epoch", "step")
_TEACHER = "teacher."


def _named_losses(losses: Any) -> dict[str, DistillationLoss]:
    if losses is None:
        return {}
    if isinstance(losses, DistillationLoss):
        losses = [losses]
    if isinstance(losses, Mapping):
        items = [(str(k), v) for k, v in losses.items() if v is not None]
    elif isinstance(losses, Sequence) and not isinstance(losses, str):
        items = [(getattr(v, "name", type(v).__name__), v) for v in losses]
    else:
        raise TypeError(
            f"`losses` must be a mapping {{name: DistillationLoss}} or a list of them, got {type(losses).__name__}"
        )
    named: dict[str, DistillationLoss] = {}
    for name, loss in items:
        if isinstance(loss, Mapping):
            raise ValueError(
                f"`losses[{name!r}]` is a config without `_target_` ({dict(loss)}): fields were set for a loss "
                f"term that is not selected; select it (distill=[...,{name}]) or drop those fields"
            )
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                f"`losses[{name!r}]` must be a DistillationLoss (KDLoss, FitNetsLoss, AttentionTransferLoss, "
                f"...), got {type(loss).__name__}"
            )
        if not name or any(c in name for c in "./ ") or name == "ce":
            raise ValueError(f"loss name {name!r} is not allowed: non-empty, no '.', '/' or space, not 'ce'")
        if name in named:
            raise ValueError(
                f"two losses are named {name!r}; pass a mapping {{name: loss}} with distinct names"
            )
        named[name] = loss
    return named


class DistillationModule(LightningModule):
    """Train a student to match a frozen teacher: ``total = Σ_i weight_i · L_i (+ w_ce · CE(z_s, y))``.

    The loss terms (``effdl_lightning.core.distill``) are any weighted sum of KD (Hinton et al. 2015, arXiv
    1503.02531), FitNets hints (Romero et al. 2015, arXiv 1412.6550) and attention transfer (Zagoruyko &
    Komodakis 2017, arXiv 1612.03928). Terms that read intermediate layers name them by module path; the
    outputs are captured by forward hooks, so neither network's ``forward`` is edited.

    The teacher is frozen (``requires_grad=False``), stays in eval mode when the module goes ``.train()``,
    runs under ``torch.no_grad()``, moves with the module, and is left out of saved checkpoints unless
    ``save_teacher=True``; a checkpoint without it loads (also strictly) into a module whose teacher was
    rebuilt from its source. The student is ``self.student``: compression callbacks (``MagnitudePruning``,
    ``QuantizationAwareTraining``, ...) act on it and not on the teacher, and the compression record is the
    student's. FitNets' regressors are parameters of their loss, trained with the student.

    **Stages.** When a term has ``stage1_epochs > 0`` (FitNets), the first ``stage1_epochs`` epochs train
    those terms alone (no cross-entropy: the student up to the guided layer, plus the regressors), then every
    other term (e.g. KD) without them, as in FitNets' two-stage training. ``train/stage`` logs 1 or 2.

    **Hard labels.** ``hard_label_weight=None`` adds ``CE(z_s, y)`` with weight 1 when no active term has its
    own hard-label part (KD's ``(1 − α)·CE``), else 0. With no loss term at all the module trains the student
    alone (a baseline with the same data, optimizer and schedule; the teacher is not run).

    Logs ``train/loss`` (the total), ``train/loss_<name>`` per term (unweighted), ``train/loss_ce`` when
    added, ``train/acc``, ``train/stage`` and, for the student, ``val/loss``, ``val/acc``, ``test/*`` (and
    ``*/acc_top5`` with at least 5 classes), exactly as ``ClassificationModule`` does. (Lightning's "modules
    in eval mode at the start of training" warning counts the teacher's modules: expected.) Under DDP, terms
    that leave student parameters without gradient (FitNets' stage 1, the regressors in stage 2) need
    ``strategy=ddp_find_unused_parameters_true``.

    Args:
        student: the network to train, or a ``ClassificationModule`` (its ``model`` is the student and its
            ``num_classes``, optimizer, scheduler and input shape are the defaults here).
        teacher: an ``nn.Module``, a Lightning checkpoint path of a ``train.py`` run, or a mapping
            ``{"model": nn.Module | {"_target_": ...}, "ckpt_path": ..., "weights_path": ...}`` (see
            :func:`effdl_lightning.modules.teacher.load_teacher`).
        losses: ``{name: DistillationLoss}`` (names appear in the logs), or a list of terms (named by their
            ``name``: ``kd``, ``fitnets``, ``at``). Terms of weight 0 are left out.
        num_classes: number of classes (default: the ``ClassificationModule``'s).
        optimizer: factory ``params -> Optimizer`` (default SGD(lr=0.1, momentum=0.9)); receives the student's
            and the regressors' parameters, never the teacher's.
        scheduler: optional factory ``optimizer -> LR scheduler``.
        scheduler_interval: ``"epoch"`` or ``"step"`` (default ``"epoch"``).
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches (default ``"val/loss"``).
        hard_label_weight: weight of the added ``CE(z_s, y)``; ``None`` = automatic (see above).
        input_shape: input shape without batch; sets ``example_input_array`` and lets FitNets' regressors be
            built at construction (otherwise at ``setup`` from the datamodule's ``input_shape``).
        save_teacher: keep the teacher's weights in saved checkpoints.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherSpec,
        losses: Mapping[str, DistillationLoss] | Sequence[DistillationLoss] | None,
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str | None = None,
        scheduler_monitor: str | None = None,
        hard_label_weight: float | None = None,
        input_shape: Sequence[int] | None = None,
        save_teacher: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(student, ClassificationModule):
            wrapper = student
            student = wrapper.model
            num_classes = wrapper.num_classes if num_classes is None else num_classes
            optimizer = optimizer or wrapper.optimizer_factory
            scheduler = scheduler or wrapper.scheduler_factory
            scheduler_interval = scheduler_interval or wrapper.scheduler_interval
            scheduler_monitor = scheduler_monitor or wrapper.scheduler_monitor
            input_shape = input_shape if input_shape is not None else wrapper.input_shape
        if not isinstance(student, nn.Module) or isinstance(student, LightningModule):
            raise TypeError(
                f"`student` must be an nn.Module or a ClassificationModule, got {type(student).__name__}"
            )
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes}")
        scheduler_interval = scheduler_interval or "epoch"
        scheduler_monitor = scheduler_monitor or "val/loss"
        if scheduler_interval not in _INTERVALS:
            raise ValueError(f"`scheduler_interval` must be one of {_INTERVALS}, got {scheduler_interval!r}")
        if hard_label_weight is not None and not float(hard_label_weight) >= 0:
            raise ValueError(f"`hard_label_weight` must be >= 0 or None (automatic), got {hard_label_weight}")
        # terms of weight 0 are left out
        named = {n: loss for n, loss in _named_losses(losses).items() if loss.weight > 0}
        net, source = load_teacher(teacher)
        if net is student:
            raise ValueError(
                "`teacher` and `student` are the same module; the teacher must be a separate network"
            )
        # plain types only, so that checkpoints load with weights_only=True
        num_classes = int(num_classes)
        input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        hard_label_weight = float(hard_label_weight) if hard_label_weight is not None else None
        self.save_hyperparameters(ignore=["student", "teacher", "losses", "optimizer", "scheduler"])
        self.hparams["teacher_source"] = source
        self.hparams["loss_terms"] = {name: repr(loss) for name, loss in named.items()}

        self.student = student
        self.teacher = net
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.losses = nn.ModuleDict(named)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.hard_label_weight = hard_label_weight
        self.save_teacher = bool(save_teacher)
        self.input_shape = input_shape
        #: epochs of the hints-only first stage (the largest ``stage1_epochs`` of the terms)
        self.stage1_epochs = max((loss.stage1_epochs for loss in named.values()), default=0)
        # wrong module paths fail here, naming the path and the close ones
        self._captures: dict[int, tuple[FeatureCapture, FeatureCapture]] = {
            stage: self._make_captures(stage) for stage in (1, 2)
        }
        if input_shape is not None:
            self.example_input_array = torch.zeros(1, *input_shape)
            self._build_regressors(input_shape)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        if num_classes >= 5:
            self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")
            self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro")

    # --- the objective -----------------------------------------------------------------------------------------
    @property
    def stage(self) -> int:
        """1 during the hints-only epochs (``epoch < stage1_epochs``), else 2."""
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        return 1 if epoch < self.stage1_epochs else 2

    def active_losses(self, stage: int | None = None) -> dict[str, DistillationLoss]:
        """The terms summed in ``stage`` (default: the current one)."""
        stage = self.stage if stage is None else stage
        terms = {name: cast(DistillationLoss, loss) for name, loss in self.losses.items()}
        if self.stage1_epochs == 0:
            return terms
        hints = stage == 1
        return {name: loss for name, loss in terms.items() if (loss.stage1_epochs > 0) == hints}

    def hard_label_weight_in(self, stage: int | None = None) -> float:
        """Weight of the added ``CE(z_s, y)`` in ``stage`` (0 in a hints-only stage)."""
        stage = self.stage if stage is None else stage
        if self.stage1_epochs > 0 and stage == 1:
            return 0.0
        if self.hard_label_weight is not None:
            return self.hard_label_weight
        return 0.0 if any(loss.includes_hard_labels for loss in self.active_losses(stage).values()) else 1.0

    def _make_captures(self, stage: int) -> tuple[FeatureCapture, FeatureCapture]:
        active = self.active_losses(stage).values()
        student_paths = [p for loss in active for p in loss.student_layers]
        teacher_paths = [p for loss in active for p in loss.teacher_layers]
        return (
            FeatureCapture(self.student, student_paths, owner="student"),
            FeatureCapture(self.teacher, teacher_paths, owner="teacher"),
        )

    def _build_regressors(self, input_shape: Sequence[int]) -> None:
        """Build FitNets' regressors from one probing forward pass of both networks (eval mode, no grad)."""
        pending = [loss for loss in self.losses.values() if isinstance(loss, FitNetsLoss) and not loss.built]
        if not pending:
            return
        student = FeatureCapture(
            self.student, [p for loss in pending for p in loss.student_layers], "student"
        )
        teacher = FeatureCapture(
            self.teacher, [p for loss in pending for p in loss.teacher_layers], "teacher"
        )
        param = next(self.student.parameters(), None)
        x = torch.zeros(2, *input_shape, device=param.device if param is not None else None)
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                with student as s_features:
                    self.student(x)
                with teacher as t_features:
                    self.teacher(x)
        finally:
            self.student.train(was_training)
        s_shapes = {k: tuple(v.shape[1:]) for k, v in s_features.items()}
        t_shapes = {k: tuple(v.shape[1:]) for k, v in t_features.items()}
        for loss in pending:
            loss.build_regressors(s_shapes, t_shapes)
            loss.to(x.device)

    def _check_logits(self, logits: torch.Tensor, who: str) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the {who} returned logits of shape {tuple(logits.shape)}; expected (batch, {self.num_classes})"
            )

    # --- Lightning hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        # FitNets' regressors must exist before the optimizer (fit) and before a checkpoint's weights load
        if all(loss.built for loss in self.losses.values() if isinstance(loss, FitNetsLoss)):
            return
        shape = self.input_shape or getattr(getattr(self.trainer, "datamodule", None), "input_shape", None)
        if shape is None:
            if stage != "fit":
                return
            raise ValueError(
                "DistillationModule: FitNets needs the input shape to build its regressors before the optimizer "
                "exists: pass `input_shape=(C, H, W)` or use a datamodule with an `input_shape` attribute"
            )
        self._build_regressors(tuple(int(d) for d in shape))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @override
    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        self.teacher.eval()  # Lightning puts the whole module in train mode every epoch
        return self

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        stage = self.stage
        active = self.active_losses(stage)
        student_capture, teacher_capture = self._captures[stage]
        with student_capture as s_features:
            logits = self.student(x)
        self._check_logits(logits, "student")
        total = logits.new_zeros(())
        if active:
            with torch.no_grad(), teacher_capture as t_features:
                t_logits = self.teacher(x)
            self._check_logits(t_logits, "teacher")
            for capture in (student_capture, teacher_capture):
                if capture.missing():
                    raise RuntimeError(
                        f"the {capture.owner}'s modules {capture.missing()} did not run in the forward pass"
                    )
            inputs = DistillationInputs(logits, t_logits, y, dict(s_features), dict(t_features))
            for name, loss in active.items():
                value = loss(inputs)
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True)
                total = total + loss.weight * value
        ce_weight = self.hard_label_weight_in(stage)
        if ce_weight > 0:
            ce = F.cross_entropy(logits, y)
            self.log("train/loss_ce", ce, on_step=False, on_epoch=True)
            total = total + ce_weight * ce
        self.train_acc(logits, y)
        self.log("train/loss", total, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/stage", float(stage), on_step=False, on_epoch=True)
        return total

    def _eval_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        self._check_logits(logits, "student")
        loss = F.cross_entropy(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage != "test", sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if self.num_classes >= 5:
            top5 = getattr(self, f"{stage}_acc_top5")
            top5(logits, y)
            self.log(f"{stage}/acc_top5", top5, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(x).argmax(dim=1)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(_TEACHER)]
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

    # --- checkpoints: the teacher is rebuilt from its source, not saved ------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.save_teacher:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith(_TEACHER)]:
                del state[key]

    @override
    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load as ``nn.Module`` does; a state without teacher keys keeps the current (rebuilt) teacher."""
        if not any(str(k).startswith(_TEACHER) for k in state_dict):
            filled: OrderedDict[str, Any] = OrderedDict(state_dict)
            for key, value in self.teacher.state_dict().items():
                filled[_TEACHER + key] = value
            metadata = getattr(state_dict, "_metadata", None)
            if metadata is not None:
                filled._metadata = metadata  # type: ignore[attr-defined]
            state_dict = filled
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
