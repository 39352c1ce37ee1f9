"""Channel pruning (He et al. 2017) inside ``fit``: LASSO channel selection + least-squares reconstruction."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from effdl_lightning.callbacks.structure import StructureChangingCallback
from effdl_lightning.core.channel_selection import METHODS, channel_pruning_
from effdl_lightning.core.surgery import apply_cut, compose_cuts

__all__ = ["ChannelPruning"]


class ChannelPruning(StructureChangingCallback):
    """He et al. (arXiv 1707.06168): per layer, keep the input channels a LASSO regression selects, refit.

    ``ChannelPruning(ratio=0.5)`` alone prunes, at the start of the fit, half of the channels of every layer
    whose channels feed exactly one conv or linear layer (plain chains: VGG, the inside of residual blocks),
    layer by layer in forward order: the next layer's inputs are sampled from the network pruned so far and
    its target outputs from the original network (:func:`effdl_lightning.core.channel_selection.channel_pruning_`).
    The channels are removed physically, the next layer's weights replaced by the least-squares fit, the
    optimizer and schedulers rebuilt (the refitted layers start with fresh optimizer state), and the cut
    recorded for resume and :func:`effdl_lightning.load_compressed`. Under DDP rank 0 computes the cut on its
    calibration batches and every rank applies the same cut and weights.

    Args:
        ratio: fraction of each eligible layer's channels to remove, in ``[0, 1)``.
        method: ``lasso`` (He et al.), ``l1`` (filter norm, Li et al.) or ``random`` (the controls).
        reconstruct: refit the next layer by least squares (He et al.'s second step).
        calibration_batches: training batches whose inputs are sampled.
        samples_per_image: random output positions sampled per image (the paper: 10).
        include: glob patterns on a group's name, producer or consumer; only those are pruned.
        exclude: glob patterns of groups to skip.
        start_epoch: epoch at whose start the cut happens.
        seed: seed of the sampled positions and of ``random``.
    """

    def __init__(
        self,
        ratio: float = 0.5,
        method: str = "lasso",
        reconstruct: bool = True,
        calibration_batches: int = 8,
        samples_per_image: int = 10,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        start_epoch: int = 0,
        seed: int = 0,
    ) -> None:
        def bad(name: str, value: object, allowed: str) -> MisconfigurationException:
            return MisconfigurationException(f"ChannelPruning: `{name}` must be {allowed}, got {value!r}")

        if not 0.0 <= ratio < 1.0:
            raise bad("ratio", ratio, "in [0, 1)")
        if method not in METHODS:
            raise bad("method", method, f"one of {METHODS}")
        if calibration_batches < 1:
            raise bad("calibration_batches", calibration_batches, ">= 1")
        if samples_per_image < 1:
            raise bad("samples_per_image", samples_per_image, ">= 1")
        if start_epoch < 0:
            raise bad("start_epoch", start_epoch, ">= 0")
        self.ratio = ratio
        self.method = method
        self.reconstruct = reconstruct
        self.calibration_batches = calibration_batches
        self.samples_per_image = samples_per_image
        self.include = [include] if isinstance(include, str) else include
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        self.start_epoch = start_epoch
        self.seed = seed
        self.done = False
        self.layers: list[dict[str, Any]] = []

    def _calibration(self, trainer: pl.Trainer) -> list[Any]:
        loader = trainer.train_dataloader
        if loader is None:
            raise MisconfigurationException("ChannelPruning needs the training dataloader for calibration")
        return list(islice(iter(loader), self.calibration_batches))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done and trainer.current_epoch >= self.start_epoch:
            self.cut(trainer, pl_module)

    def cut(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune now (what ``on_train_epoch_start`` does at ``start_epoch``)."""
        batches = self._calibration(trainer)

        def change(model: nn.Module) -> tuple[dict[str, Any], None]:
            payload: dict[str, Any] | None = None
            if trainer.global_rank == 0:
                was_training = model.training
                result = channel_pruning_(
                    model,
                    batches,
                    self.ratio,
                    self.method,
                    self.reconstruct,
                    samples_per_image=self.samples_per_image,
                    include=self.include,
                    exclude=self.exclude,
                    generator=torch.Generator().manual_seed(self.seed),
                )
                model.train(was_training)
                cut = compose_cuts(result.cuts)
                payload = {
                    "cut": cut.to_dict(),
                    "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "layers": [vars(layer) for layer in result.layers],
                    "skipped": result.skipped,
                }
            if trainer.world_size > 1:
                payload = trainer.strategy.broadcast(payload, src=0)
                assert payload is not None
                if trainer.global_rank != 0:
                    apply_cut(model, payload["cut"])
                    model.load_state_dict(payload["state"])
            assert payload is not None
            self.layers = list(payload["layers"])
            for group, reason in payload["skipped"].items():
                rank_zero_info(f"ChannelPruning: {group} kept: {reason}")
            return payload["cut"], None  # refitted layers get fresh optimizer state

        self.change_structure(trainer, pl_module, change)
        self.done = True
        errors = [layer["error_after"] for layer in self.layers]
        rank_zero_info(
            f"ChannelPruning ({self.method}{' + least squares' if self.reconstruct else ''}) pruned "
            f"{len(self.layers)} layers at epoch {trainer.current_epoch}; mean relative reconstruction error "
            f"{sum(errors) / max(len(errors), 1):.4f}"
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.layers:
            errors = [layer["error_after"] for layer in self.layers]
            pl_module.log(
                "compress/reconstruction_error",
                float(sum(errors) / len(errors)),
                on_step=False,
                on_epoch=True,
                rank_zero_only=True,
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "layers": list(self.layers)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
        self.layers = list(state_dict.get("layers", []))
