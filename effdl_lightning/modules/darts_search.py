"""DARTS architecture search as a LightningModule: bilevel optimization of weights and α, manual optimization."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.core.nas.darts_architect import first_order_arch_grad_, second_order_arch_grad_
from effdl_lightning.core.nas.darts_genotype import Genotype
from effdl_lightning.modules.classification import ClassificationModule, OptimizerFactory, SchedulerFactory

__all__ = ["DartsSearchModule"]

log = logging.getLogger(__name__)

_ORDERS = ("first", "second")


def _entropy(alpha: Tensor) -> Tensor:
    """Mean over edges of the entropy (nats) of ``softmax(α_edge)``; ``log(#ops)`` = uniform mixing."""
    p = torch.softmax(alpha.detach(), dim=-1)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()


class DartsSearchModule(ClassificationModule):
    """Search a DARTS cell (Liu et al. 2019, arXiv 1806.09055): alternate an architecture step on α and a
    weight step on w, with two optimizers under Lightning manual optimization.

    Each training batch is split in two (the first ``1 − val_fraction`` of its samples train the weights, the
    rest the architecture): DARTS's split of the training data into a weight half and an architecture half,
    done per batch so that any datamodule works unchanged (its training loader must shuffle, as ours do).
    Within a step the halves are disjoint; across epochs a sample may serve both (the reference code splits
    the training set once). Per batch:

    1. **architecture step** (Adam on α): ``∇_α L_arch`` first order (``∇_α L_val(w, α)``) or second order
       (unrolled ``w' = w − ξ∇_w L_train``, finite-difference Hessian-vector product), see
       :mod:`effdl_lightning.core.nas.darts_architect`; the unrolled step uses the weight optimizer's momentum,
       momentum buffers and weight decay as the reference does (exact for plain SGD);
    2. **weight step**: ``∇_w L_train(w, α)``, gradient norm clipped to ``grad_clip``, then the weight
       optimizer (SGD with a cosine schedule in DARTS).

    The real validation set measures the supernet (``val/acc``, ``val/loss``). Logs ``train/loss``,
    ``train/acc``, ``search/arch_loss`` (the loss whose α-gradient was taken), ``search/entropy_normal`` and
    ``search/entropy_reduce`` (mean entropy of the edges' softmax(α); it falls as the choice sharpens). After
    every training epoch and at fit end (rank zero) it logs the derived genotype as text and writes it to
    ``genotype_path`` (JSON, plain data) plus a Hydra model config ``<stem>_model.yaml`` next to it
    (``_target_: effdl_lightning.models.DartsNetwork`` with the genotype inline), so that
    ``python train.py model=darts_genotype model.genotype=<genotype.json>`` or
    ``hydra.utils.instantiate(OmegaConf.load("<stem>_model.yaml"))`` retrains the cell.

    Resumable: α are parameters of the network (in the state dict); both optimizers and the weight scheduler
    are returned by :meth:`configure_optimizers`, so Lightning checkpoints them. The epoch scheduler steps at
    the start of each epoch until its ``last_epoch`` equals the epoch, which gives the same schedule whether
    or not the fit was interrupted. Under DDP the architect differentiates the bare network, and α's gradients
    are averaged over the processes before Adam's step (not covered by the tests, which run one process).

    Args:
        model: the search network: a ``DartsSearchNetwork`` (``conf/model/darts_search.yaml``) or any module
            with ``arch_parameters()`` (the α) and ``genotype()``; every other parameter is a weight.
        num_classes: number of classes.
        order: ``"first"`` (ξ = 0) or ``"second"`` (unrolled, finite-difference Hessian-vector product).
        arch_lr: Adam learning rate of α (3e-4 in the paper).
        arch_betas: Adam betas of α ((0.5, 0.999) in the paper).
        arch_weight_decay: Adam weight decay of α (1e-3 in the paper).
        xi: the unrolled step size ξ of the second order; ``None`` = the weight optimizer's current learning
            rate (the paper's choice).
        optimizer: factory ``params -> Optimizer`` of the weights (default SGD(lr=0.025, momentum=0.9,
            weight_decay=3e-4), the paper's).
        scheduler: optional factory ``optimizer -> LR scheduler`` of the weights (Hydra: cosine).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        grad_clip: max gradient norm of the weight step (5 in the paper); ``None`` or 0 = off.
        val_fraction: fraction of each training batch given to the architecture step, in (0, 1).
        genotype_path: where to write the genotype JSON; ``None`` = ``<trainer.default_root_dir>/genotype.json``.
        input_shape: input shape without batch (``example_input_array``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        order: str = "first",
        arch_lr: float = 3e-4,
        arch_betas: Sequence[float] = (0.5, 0.999),
        arch_weight_decay: float = 1e-3,
        xi: float | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        grad_clip: float | None = 5.0,
        val_fraction: float = 0.5,
        genotype_path: str | Path | None = None,
        input_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        missing = [m for m in ("arch_parameters", "genotype") if not callable(getattr(model, m, None))]
        if missing:
            raise TypeError(
                f"`model` must be a DARTS search network (e.g. DartsSearchNetwork, model=darts_search); "
                f"{type(model).__name__} has no {' or '.join(f'{m}()' for m in missing)}"
            )
        if order not in _ORDERS:
            raise ValueError(f"`order` must be one of {_ORDERS}, got {order!r}")
        if not float(arch_lr) > 0:
            raise ValueError(f"`arch_lr` must be > 0, got {arch_lr}")
        betas = tuple(float(b) for b in arch_betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"`arch_betas` must be two numbers in [0, 1), got {list(arch_betas)}")
        if not float(arch_weight_decay) >= 0:
            raise ValueError(f"`arch_weight_decay` must be >= 0, got {arch_weight_decay}")
        if xi is not None and not float(xi) >= 0:
            raise ValueError(f"`xi` must be >= 0 or None (the weights' learning rate), got {xi}")
        if grad_clip is not None and not float(grad_clip) >= 0:
            raise ValueError(f"`grad_clip` must be >= 0 or None (off), got {grad_clip}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"`val_fraction` must be in the open interval (0, 1), got {val_fraction}")
        # plain types only (they end up in the checkpoint's hyper-parameters, loaded with weights_only=True)
        arch_betas = [betas[0], betas[1]]
        arch_lr, arch_weight_decay = float(arch_lr), float(arch_weight_decay)
        xi = float(xi) if xi is not None else None
        grad_clip = float(grad_clip) if grad_clip else None
        val_fraction = float(val_fraction)
        genotype_path = str(genotype_path) if genotype_path is not None else None
        super().__init__(
            model,
            num_classes,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor,
            input_shape=input_shape,
        )
        self.automatic_optimization = False
        self.order = order
        self.arch_lr = arch_lr
        self.arch_betas: tuple[float, float] = (betas[0], betas[1])
        self.arch_weight_decay = arch_weight_decay
        self.xi = xi
        self.grad_clip = grad_clip
        self.val_fraction = val_fraction
        self.genotype_path = genotype_path

    # --- the two parameter sets -----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture α of the search network."""
        return list(self.model.arch_parameters())  # type: ignore[operator]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter that is not an α."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in arch]

    @property
    def genotype(self) -> Genotype:
        """The genotype the current α give (top-2 incoming edges per node, never ``none``)."""
        genotype = self.model.genotype()  # type: ignore[operator]
        assert isinstance(genotype, Genotype)
        return genotype

    # --- training ---------------------------------------------------------------------------------------------
    def split_batch(self, batch: Any) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((x_w, y_w), (x_α, y_α))``: the first ``1 − val_fraction`` of the batch, and the rest."""
        x, y = batch[0], batch[1]
        n = int(x.shape[0])
        if n < 2:
            raise ValueError(f"DARTS splits each training batch in two; got a batch of {n} sample(s)")
        k = min(n - 1, max(1, round(n * self.val_fraction)))
        return (x[: n - k], y[: n - k]), (x[n - k :], y[n - k :])

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y)

    def _arch_step(self, train: tuple[Tensor, Tensor], arch: tuple[Tensor, Tensor], w_opt: Any) -> Tensor:
        if self.order == "first":
            loss = first_order_arch_grad_(self.model, self._loss, arch)  # type: ignore[arg-type]
        else:
            inner = getattr(w_opt, "optimizer", w_opt)  # the torch optimizer under Lightning's wrapper
            xi = self.xi if self.xi is not None else float(inner.param_groups[0]["lr"])
            loss = second_order_arch_grad_(
                self.model,  # type: ignore[arg-type]
                self._loss,
                train,
                arch,
                xi,
                optimizer=inner,
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the architect differentiates the bare network (no DDP hooks): average α's gradients here
            world = torch.distributed.get_world_size()
            for p in self.arch_parameters():
                assert p.grad is not None
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        assert isinstance(optimizers, list) and len(optimizers) == 2
        w_opt, a_opt = optimizers
        train, arch = self.split_batch(batch)
        # 1. architecture step: α.grad is written by the architect, then Adam
        a_opt.zero_grad()
        arch_loss = self._arch_step(train, arch, w_opt)
        a_opt.step()
        # 2. weight step on the weights' half (α's gradients from this backward are never used)
        w_opt.zero_grad()
        logits = self(train[0])
        loss = self._loss(logits, train[1])
        self.manual_backward(loss)
        if self.grad_clip:
            self.clip_gradients(
                w_opt.optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm"
            )
        w_opt.step()
        if self.scheduler_interval == "step":
            self._step_scheduler()
        self.train_acc(logits, train[1])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("search/arch_loss", arch_loss, on_step=True, on_epoch=True)
        alpha_normal, alpha_reduce = self.arch_parameters()[:2]
        self.log("search/entropy_normal", _entropy(alpha_normal), on_step=False, on_epoch=True)
        self.log("search/entropy_reduce", _entropy(alpha_reduce), on_step=False, on_epoch=True)
        return loss.detach()

    def _scheduler(self) -> Any:
        schedulers = self.lr_schedulers()
        if isinstance(schedulers, list):
            return schedulers[0] if schedulers else None
        return schedulers

    def _step_scheduler(self) -> None:
        scheduler = self._scheduler()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = self.trainer.callback_metrics.get(self.scheduler_monitor)
            if metric is None:
                raise MisconfigurationException(
                    f"ReduceLROnPlateau watches {self.scheduler_monitor!r}, which was not logged; logged: "
                    f"{sorted(self.trainer.callback_metrics)}"
                )
            scheduler.step(float(metric))
        else:
            scheduler.step()

    @override
    def on_train_epoch_start(self) -> None:
        # epoch schedulers step at the start of epochs 1, 2, ... — as many times as needed to reach the epoch,
        # so a fit resumed from any checkpoint follows the uninterrupted schedule
        scheduler = self._scheduler()
        if self.scheduler_interval == "epoch" and scheduler is not None:
            with warnings.catch_warnings():
                # after a resume the weight optimizer has not stepped yet in this process: harmless here
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                while int(getattr(scheduler, "last_epoch", self.current_epoch)) < self.current_epoch:
                    self._step_scheduler()

    @override
    def on_train_epoch_end(self) -> None:
        self._write_genotype(self.current_epoch + 1)

    @override
    def on_fit_end(self) -> None:
        self._write_genotype(self.current_epoch)

    # --- the result ------------------------------------------------------------------------------------------
    def genotype_file(self) -> Path:
        """The genotype JSON path (``genotype_path`` or ``<trainer.default_root_dir>/genotype.json``)."""
        if self.genotype_path is not None:
            return Path(self.genotype_path)
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(root) / "genotype.json"

    @rank_zero_only
    def _write_genotype(self, epochs: int) -> None:
        genotype = self.genotype
        path = genotype.save(self.genotype_file())
        model_yaml = path.with_name(f"{path.stem}_model.yaml")
        model_yaml.write_text(self.model_config_yaml(genotype, path, epochs))
        log.info("DARTS genotype after %d epoch(s): %s (saved to %s)", epochs, genotype, path)

    def model_config_yaml(
        self, genotype: Genotype, path: Path | None = None, epochs: int | None = None
    ) -> str:
        """A Hydra model config of :class:`~effdl_lightning.models.DartsNetwork` with ``genotype`` inline, sized
        like the search network (change ``C``/``layers`` for a bigger retraining)."""
        import yaml

        net = self.model
        spec = {
            "_target_": "effdl_lightning.models.DartsNetwork",
            "genotype": genotype.to_dict(),
            "C": int(getattr(net, "C", 16)),
            "num_classes": self.num_classes,
            "layers": int(getattr(net, "layers", 8)),
            "in_channels": int(getattr(net, "in_channels", 3)),
            "drop_path_prob": 0.0,
            "auxiliary": False,
        }
        header = [
            f"# DARTS cell found by DartsSearchModule (order={self.order}, after "
            f"{self.current_epoch if epochs is None else epochs} epoch(s)).",
            "# Retrain: hydra.utils.instantiate(OmegaConf.load(<this file>)), copy it to conf/model/, or",
            f"#   python train.py model=darts_genotype model.genotype={path or '<genotype.json>'}",
        ]
        body = yaml.safe_dump(spec, default_flow_style=None, sort_keys=False)
        return "\n".join(header) + "\n" + body

    # --- optimizers ------------------------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        weights = self.weight_parameters()
        if self.optimizer_factory is None:
            w_opt: torch.optim.Optimizer = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
        else:
            w_opt = self.optimizer_factory(weights)
        a_opt = torch.optim.Adam(
            self.arch_parameters(),
            lr=self.arch_lr,
            betas=self.arch_betas,
            weight_decay=self.arch_weight_decay,
        )
        if self.scheduler_factory is None:
            return [w_opt, a_opt]
        scheduler = self.scheduler_factory(w_opt)
        # stepped by this module (manual optimization): Lightning only checkpoints it
        return [w_opt, a_opt], [scheduler]
