"""Low-rank factorization inside ``fit``: SVD, Jaderberg et al. and Zhang et al., then fine-tuning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.structure import StructureChangingCallback
from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.lowrank import (
    LowRankConfig,
    add_nuclear_norm_gradient_,
    apply_low_rank_entry,
    low_rank_,
    low_rank_candidates,
)

__all__ = ["LowRankFactorization"]


class LowRankFactorization(StructureChangingCallback):
    """Replace linear and conv layers by two thin layers at a chosen epoch, then fine-tune the factors.

    ``LowRankFactorization(method="svd", rank_ratio=0.25)`` alone replaces, at the start of the fit (a pretrained
    model), every ``nn.Linear`` by ``Linear(in, r) → Linear(r, out)`` and every ``nn.Conv2d`` by ``r`` filters of its
    kernel then a 1×1 conv, from the truncated SVD of the weights, at a quarter of each layer's full rank. The
    factors are a plain ``nn.Sequential`` of standard layers, so :class:`MagnitudePruning` and
    :class:`QuantizationAwareTraining` placed after this callback prune and quantize them (factorize → prune →
    quantize; the factorization must come before the first pruning event, whose masks name the dense layers).
    The optimizer and LR schedulers are rebuilt (the factors start with fresh optimizer state, the
    schedule keeps its position), DDP is re-wrapped, and the swap is recorded in the checkpoint, so
    ``fit(ckpt_path=...)`` resumes after it and :func:`effdl_lightning.load_compressed` rebuilds the factorized
    model. Under DDP rank 0 computes the factors on its calibration batches and every rank applies the same ones.

    Methods (see :mod:`effdl_lightning.core.lowrank.factorize`): ``svd`` (linear and conv); ``jaderberg``
    (Jaderberg et al., arXiv 1405.3866, scheme 2: ``kh×1`` then ``1×kw`` convs, filter reconstruction) and
    ``jaderberg_data`` (the same refined by data reconstruction), convs only; ``zhang`` (Zhang et al., arXiv
    1505.06798: PCA of the responses, ``d′`` filters + 1×1 conv with bias ``ȳ − Mȳ``) and ``zhang_asymmetric``
    (their asymmetric reconstruction from the inputs of the network approximated so far), linear and conv. A
    string applies to every layer type the method handles; ``{"linear": ..., "conv": ...}`` picks per type (a
    missing key or ``None`` leaves that type alone).

    Ranks: ``rank_ratio`` (``round(ratio · full rank)``) unless one of ``rank`` (the same for every layer),
    ``energy`` (the smallest rank keeping that fraction of the spectrum's energy: squared singular values of the
    weights, or eigenvalues of the responses for Zhang's methods) or ``mac_budget`` (the fraction of the model's
    conv + linear MACs to keep, per-layer ranks by Zhang's greedy selection) is given; ``round_to=8`` keeps every
    rank on a multiple of 8 (CPU kernels compute channels in blocks; an odd rank saves MACs but little time). Layers
    whose factors would
    not cost fewer MACs, grouped convs and other unsupported layers are left alone with the reason logged.

    Regularizer: ``nuclear_norm=λ > 0`` adds ``λ Σ_l ‖W_l‖_*`` to the training objective before the conversion,
    as its gradient ``λ·U_l V_lᵀ`` added to each selected weight's gradient in ``on_before_optimizer_step`` (after
    the backward pass, gradient accumulation and AMP unscaling, before clipping and the step; the LightningModule's
    loss is not touched). It pushes the spectrum the conversion will cut towards zero.

    Logs ``compress/macs``, ``compress/params``, ``compress/macs_fraction`` and ``compress/lowrank_layers`` after
    the conversion, ``compress/nuclear_norm`` while regularizing.

    Args:
        method: a method name for every supported layer type, or ``{"linear": ..., "conv": ...}``.
        rank: one rank for every layer (capped at each layer's full rank).
        rank_ratio: fraction of each layer's full rank, in ``(0, 1]`` (used when no other rule is given).
        energy: fraction of each layer's spectrum energy to keep, in ``(0, 1]``.
        mac_budget: fraction of the model's conv + linear MACs to keep, in ``(0, 1]`` (Zhang's greedy ranks).
        round_to: keep every rank on a multiple of this, ``>= 1`` (1: any rank).
        start_epoch: epoch at whose start the layers are factorized (0: at the start of the fit).
        calibration_batches: training batches used for shapes and MACs and by the data-driven methods.
        include: glob patterns on layer names to factorize (default: every linear and conv).
        exclude: glob patterns on layer names to leave alone (e.g. the classifier).
        nuclear_norm: weight ``λ`` of the nuclear-norm regularizer before the conversion (0: off).
        data_steps: L-BFGS iterations of ``jaderberg_data``.
    """

    def __init__(
        self,
        method: str | Mapping[str, str | None] = "svd",
        rank: int | None = None,
        rank_ratio: float | None = 0.25,
        energy: float | None = None,
        mac_budget: float | None = None,
        round_to: int = 1,
        start_epoch: int = 0,
        calibration_batches: int = 4,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        nuclear_norm: float = 0.0,
        data_steps: int = 25,
    ) -> None:
        def bad(name: str, value: object, allowed: str) -> MisconfigurationException:
            return MisconfigurationException(
                f"LowRankFactorization: `{name}` must be {allowed}, got {value!r}"
            )

        try:
            self.config = LowRankConfig.from_method(
                method,
                rank=rank,
                rank_ratio=rank_ratio,
                energy=energy,
                mac_budget=mac_budget,
                round_to=round_to,
                data_steps=data_steps,
            )
        except ValueError as err:
            raise MisconfigurationException(f"LowRankFactorization: {err}") from err
        if start_epoch < 0:
            raise bad("start_epoch", start_epoch, ">= 0")
        if calibration_batches < 1:
            raise bad("calibration_batches", calibration_batches, ">= 1")
        if nuclear_norm < 0:
            raise bad("nuclear_norm", nuclear_norm, ">= 0")
        self.start_epoch = start_epoch
        self.calibration_batches = calibration_batches
        self.include = [include] if isinstance(include, str) else include
        self.exclude = [exclude] if isinstance(exclude, str) else exclude
        self.nuclear_norm = nuclear_norm
        self.done = False
        self.layers: list[dict[str, Any]] = []
        self.costs: dict[str, float] = {}
        self._regularized: dict[str, tuple[nn.Module, str]] | None = None
        self._norm_sum = 0.0
        self._norm_steps = 0

    # --- selection -----------------------------------------------------------------------------------------------
    def _candidates(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        try:
            chosen, _ = low_rank_candidates(model, self.config, self.include, self.exclude)
        except ValueError as err:
            raise MisconfigurationException(f"LowRankFactorization: {err}") from err
        return chosen

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not self.done:
            self._candidates(target_model(pl_module))  # patterns that match nothing fail before training

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if not self.done and max_epochs is not None and 0 <= max_epochs <= self.start_epoch:
            rank_zero_warn(
                f"LowRankFactorization(start_epoch={self.start_epoch}) never factorizes: the fit has "
                f"max_epochs={max_epochs}"
            )

    def on_structure_change(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sliced: Mapping[str, Mapping[str, Tensor]]
    ) -> None:
        """Another callback replaced parameters: select the regularized layers again at the next step."""
        self._regularized = None

    # --- conversion ----------------------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done and trainer.current_epoch >= self.start_epoch:
            self.convert(trainer, pl_module)

    def _calibration(self, trainer: pl.Trainer) -> list[Any]:
        loader = trainer.train_dataloader
        if loader is None:
            raise MisconfigurationException(
                "LowRankFactorization needs the training dataloader for calibration"
            )
        return list(islice(iter(loader), self.calibration_batches))

    def _costs(self, model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
        from effdl_lightning.measure import profile

        report = profile(model, shape, latency=False)
        return {"macs": float(report.macs), "params": float(sum(p.numel() for p in model.parameters()))}

    def convert(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Factorize now (what ``on_train_epoch_start`` does at ``start_epoch``); returns the record entry."""
        batches = self._calibration(trainer)
        first = batches[0][0] if isinstance(batches[0], (tuple, list)) else batches[0]
        shape = tuple(first.shape[1:]) if isinstance(first, Tensor) else None
        model = target_model(pl_module)
        before = self._costs(model, shape) if shape else {}

        def change(model: nn.Module) -> tuple[dict[str, Any], None]:
            payload: dict[str, Any] | None = None
            if trainer.global_rank == 0:
                try:
                    result = low_rank_(model, batches, self.config, self.include, self.exclude)
                    prefixes = tuple(f"{name}." for name in result.entry["layers"])
                    payload = {
                        "entry": result.entry,
                        "state": {
                            k: v.detach().cpu()
                            for k, v in model.state_dict().items()
                            if k.startswith(prefixes)
                        },
                        "layers": [asdict(layer) for layer in result.layers],
                        "skipped": result.skipped,
                    }
                except ValueError as err:
                    payload = {"error": str(err)}
            if trainer.world_size > 1:
                payload = trainer.strategy.broadcast(payload, src=0)
            assert payload is not None
            if "error" in payload:  # every rank fails together
                raise MisconfigurationException(f"LowRankFactorization: {payload['error']}")
            if trainer.global_rank != 0:
                apply_low_rank_entry(model, payload["entry"])
                model.load_state_dict(payload["state"], strict=False)
            self.layers = list(payload["layers"])
            for name, reason in payload["skipped"].items():
                rank_zero_info(f"LowRankFactorization: {name} kept: {reason}")
            return payload["entry"], None  # the factors get fresh optimizer state

        entry = self.change_structure(trainer, pl_module, change)
        self.done = True
        self._regularized = None
        if shape:
            after = self._costs(model, shape)
            self.costs = {
                "macs_before": before["macs"],
                "params_before": before["params"],
                "macs": after["macs"],
                "params": after["params"],
                "macs_fraction": after["macs"] / max(before["macs"], 1.0),
            }
            rank_zero_info(
                f"LowRankFactorization ({self.config.linear} linear, {self.config.conv} conv) factorized "
                f"{len(self.layers)} layers at epoch {trainer.current_epoch}: MACs {before['macs']:,.0f} -> "
                f"{after['macs']:,.0f}, params {before['params']:,.0f} -> {after['params']:,.0f}"
            )
        return dict(entry)

    # --- regularizer ---------------------------------------------------------------------------------------------
    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.nuclear_norm <= 0 or self.done:
            return
        if self._regularized is None:
            self._regularized = self._candidates(target_model(pl_module))
        self._norm_sum += add_nuclear_norm_gradient_(self._regularized, self.nuclear_norm)
        self._norm_steps += 1

    # --- logging and state ---------------------------------------------------------------------------------------
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, float] = {}
        if self._norm_steps:
            metrics["compress/nuclear_norm"] = self._norm_sum / self._norm_steps
            self._norm_sum, self._norm_steps = 0.0, 0
        if self.costs:
            metrics.update(
                {
                    "compress/macs": self.costs["macs"],
                    "compress/params": self.costs["params"],
                    "compress/macs_fraction": self.costs["macs_fraction"],
                    "compress/lowrank_layers": float(len(self.layers)),
                }
            )
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "layers": list(self.layers), "costs": dict(self.costs)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
        self.layers = list(state_dict.get("layers", []))
        self.costs = dict(state_dict.get("costs", {}))
