"""Incremental Network Quantization (Zhou et al. 2017, arXiv 1702.03044) as a callback."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.pruning import mask_gradients_, mask_optimizer_state_
from effdl_lightning.core.quant.inq import (
    BITS_RANGE,
    PARTITION_STRATEGIES,
    partition_masks,
    power_of_two_n1,
    power_of_two_quantize,
)
from effdl_lightning.core.selection import select_modules


class IncrementalQuantization(Callback):
    """Quantize conv and linear weights to powers of two or zero, portion by portion, retraining the rest.

    INQ (arXiv 1702.03044): each selected layer's levels are ``{±2^n1, …, ±2^n2, 0}`` with
    ``n1 = floor(log2(4·max|W|/3))`` and ``n2 = n1 + 1 − 2^(b−1)/2`` (see
    :mod:`effdl_lightning.core.quant.inq`), fixed per layer from its weights at the first step. At step ``i``
    the quantized part of each layer grows to ``portions[i]`` (largest ``|w|`` first for
    ``strategy="magnitude"``, the paper's choice; ``"random"`` is the control), the newly quantized weights
    are set to their power-of-two values (eq. 4), and from then on only the not-yet-quantized weights train:
    the gradients of the quantized ones are zeroed before every optimizer step, their optimizer state
    (momentum, Adam moments) at every INQ step, and they are re-written to their fixed values after every
    optimizer step (weight decay would otherwise move them) — no forward hook. After the step at portion
    1.0 every selected weight is exactly a power of two or zero; biases, normalization layers and excluded
    layers keep training.

    Schedule: step ``i`` runs at the start of epoch ``start_epoch + i·epochs_per_step``. With
    ``epochs_per_step=None`` the steps are spread evenly so that the last one (portion 1.0) runs at the
    start of the last epoch at the latest: ``epochs_per_step = max(1, (max_epochs − 1 − start_epoch) //
    (len(portions) − 1))``; that last epoch trains only what INQ leaves free and its validation measures
    the fully quantized network. Steps a fit does not reach (a shorter or early-stopped fit) are applied at
    the end of fit, with a warning, so a fit always ends fully quantized.

    Weights that are exactly zero at the first step (pruned, e.g. by a ``MagnitudePruning`` listed before)
    count as quantized to 0 from the first step and stay 0; the portions apply to the other weights.

    The masks, fixed values, levels (``n1``) and step count are the callback's state, so
    ``fit(ckpt_path=...)`` resumes mid-INQ and ends like an uninterrupted run. Every rank computes the same
    masks (identical weights; the random strategy is seeded by ``seed`` and the step).

    Logs at each training epoch end ``compress/inq_portion`` (the portion of the last step done, 0 before
    the first) and ``compress/inq_quantized_fraction`` (fixed weights, pruned zeros included, over all
    selected weights).

    Args:
        bits: ``b`` in ``[2, 8]``: ``2^(b−2)`` powers of two per sign plus zero (the paper's 5 bits: 17 values).
        portions: accumulated quantized portions per step, strictly increasing in ``(0, 1]``, ending at 1.0
            (the paper's 50 %, 75 %, 87.5 %, 100 %).
        strategy: ``"magnitude"`` or ``"random"``.
        epochs_per_step: epochs between steps; ``None`` spreads them over the fit (see above).
        start_epoch: the epoch of the first step (train full precision before it).
        include: glob patterns on module names to quantize (default: every conv and linear).
        exclude: glob patterns on module names to leave in full precision.
        seed: seed of the ``random`` strategy (the same on every rank).
    """

    def __init__(
        self,
        bits: int = 5,
        portions: Sequence[float] = (0.5, 0.75, 0.875, 1.0),
        strategy: str = "magnitude",
        epochs_per_step: int | None = None,
        start_epoch: int = 0,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        lo, hi = BITS_RANGE
        if not is_int(bits) or not lo <= bits <= hi:
            raise MisconfigurationException(f"`bits` must be an int in [{lo}, {hi}], got {bits!r}")
        try:
            steps = [float(p) for p in portions]
        except (TypeError, ValueError):
            steps = []
        if (
            not steps
            or any(not 0.0 < p <= 1.0 for p in steps)
            or any(b <= a for a, b in itertools.pairwise(steps))
            or steps[-1] != 1.0
        ):
            raise MisconfigurationException(
                "`portions` must be strictly increasing in (0, 1] and end at 1.0 (e.g. [0.5, 0.75, 0.875, 1.0]), "
                f"got {portions!r}"
            )
        if strategy not in PARTITION_STRATEGIES:
            raise MisconfigurationException(
                f"`strategy` must be one of {PARTITION_STRATEGIES}, got {strategy!r}"
            )
        if epochs_per_step is not None and (not is_int(epochs_per_step) or epochs_per_step < 1):
            raise MisconfigurationException(
                f"`epochs_per_step` must be an int >= 1 or None, got {epochs_per_step!r}"
            )
        if not is_int(start_epoch) or start_epoch < 0:
            raise MisconfigurationException(f"`start_epoch` must be an int >= 0, got {start_epoch!r}")
        self.bits = bits
        self.portions = tuple(steps)
        self.strategy = strategy
        self.epochs_per_step = epochs_per_step
        self.start_epoch = start_epoch
        self.include, self.exclude = include, exclude
        self.seed = int(seed)

        #: how many steps are done (``portions[step - 1]`` is the current portion)
        self.step = 0
        #: epoch of each step, set at fit start
        self.step_epochs: list[int] = []
        #: per weight name: True = quantized (fixed), pruned zeros included
        self.masks: dict[str, Tensor] = {}
        #: per weight name: the fixed values where ``masks`` is True, 0 elsewhere
        self.values: dict[str, Tensor] = {}
        #: per weight name: True = exactly zero at the first step (pruned)
        self.pruned: dict[str, Tensor] = {}
        #: per weight name: the fixed ``n1`` of its levels
        self.n1: dict[str, int] = {}
        self._params: dict[str, nn.Parameter] = {}
        self._keep: dict[str, Tensor] = {}  # 1 = trainable, 0 = fixed, in the parameter's dtype
        self._fixed: dict[str, Tensor] = {}  # values · mask, in the parameter's dtype

    # --- selection and schedule ----------------------------------------------------------------------
    def _select(self, model: nn.Module) -> None:
        try:
            modules = select_modules(model, self.include, self.exclude)
        except ValueError as err:
            raise MisconfigurationException(f"IncrementalQuantization: {err}") from err
        self._params = {
            f"{name}.weight": m.weight for name, m in modules.items() if isinstance(m.weight, nn.Parameter)
        }

    def _schedule(self, trainer: pl.Trainer) -> list[int]:
        count = len(self.portions)
        every = self.epochs_per_step
        if every is None:
            max_epochs = trainer.max_epochs
            if count > 1 and (max_epochs is None or max_epochs < 1):
                raise MisconfigurationException(
                    "IncrementalQuantization spreads its steps over `Trainer(max_epochs=...)`, got "
                    f"max_epochs={max_epochs!r}: set max_epochs or pass `epochs_per_step=`"
                )
            every = 1 if count == 1 else max(1, ((max_epochs or 1) - 1 - self.start_epoch) // (count - 1))
        return [self.start_epoch + i * every for i in range(count)]

    # --- hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._select(target_model(pl_module))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step_epochs = self._schedule(trainer)
        max_epochs = trainer.max_epochs
        last = self.step_epochs[-1]
        if max_epochs is not None and 0 < max_epochs <= last and not getattr(trainer, "fast_dev_run", False):
            rank_zero_warn(
                f"IncrementalQuantization: the step at epoch {last} (portion 1.0) is beyond the last epoch "
                f"({max_epochs - 1}); the steps not reached are applied at the end of fit, without retraining"
            )
        if self.masks:  # resumed (or a second fit): re-bind the restored state to this model's parameters
            for name, mask in self.masks.items():
                param = self._params.get(name)
                if param is None or param.shape != mask.shape:
                    raise MisconfigurationException(
                        f"IncrementalQuantization: the restored state quantizes {name!r} of shape "
                        f"{tuple(mask.shape)}, which the model lacks or has another shape; quantized "
                        f"tensors: {', '.join(self._params)}"
                    )
            device = {n: self._params[n].device for n in self.masks}
            self.masks = {n: m.to(device[n]) for n, m in self.masks.items()}
            self.values = {n: v.to(device[n]) for n, v in self.values.items()}
            self.pruned = {n: m.to(device[n]) for n, m in self.pruned.items()}
            self._set_factors()
            self._write_fixed()

    def _set_factors(self) -> None:
        self._keep, self._fixed = {}, {}
        for name, mask in self.masks.items():
            dtype = self._params[name].dtype
            self._keep[name] = (~mask).to(dtype)
            self._fixed[name] = self.values[name].to(dtype) * mask.to(dtype)

    @torch.no_grad()
    def _write_fixed(self) -> None:
        """Set the quantized weights to their fixed values (``w·keep + fixed``: exact for 0/1 factors)."""
        for name, keep in self._keep.items():
            self._params[name].mul_(keep).add_(self._fixed[name])

    @torch.no_grad()
    def quantize_step(self, trainer: pl.Trainer) -> None:
        """Run the next INQ step: grow the masks to its portion, fix the new weights, reset their state."""
        index = self.step
        fraction = self.portions[index]
        weights = {n: p.detach() for n, p in self._params.items()}
        if not self.masks:  # the first step fixes the levels and the pruned zeros
            self.n1 = {
                n: power_of_two_n1(float(w.abs().max())) if w.numel() else 0 for n, w in weights.items()
            }
            self.pruned = {n: w == 0 for n, w in weights.items()}
            self.masks = {n: m.clone() for n, m in self.pruned.items()}
            self.values = {n: torch.zeros_like(w) for n, w in weights.items()}
        generator = torch.Generator().manual_seed(self.seed + index) if self.strategy == "random" else None
        for name, w in weights.items():
            alive = ~self.pruned[name]
            grown = partition_masks(
                {name: w[alive]}, fraction, self.strategy, {name: self.masks[name][alive]}, generator
            )[name]
            mask = self.pruned[name].clone()
            mask[alive] = grown
            fresh = mask & ~self.masks[name]
            quantized = power_of_two_quantize(w, self.bits, self.n1[name])
            self.values[name] = torch.where(fresh, quantized, self.values[name])
            self.masks[name] = mask
        self.step = index + 1
        self._set_factors()
        self._write_fixed()
        for optimizer in trainer.optimizers:
            mask_optimizer_state_(optimizer, self._params, self._keep)

    def _catch_up(self, trainer: pl.Trainer, epoch: int) -> None:
        while self.step < len(self.portions) and self.step_epochs[self.step] <= epoch:
            self.quantize_step(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._catch_up(trainer, trainer.current_epoch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._keep:
            mask_gradients_(self._params, self._keep)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._keep:  # after the optimizer step: undo weight decay and any other move of fixed weights
            self._write_fixed()

    def quantized_fraction(self) -> float:
        """Fixed weights (quantized or pruned) over all selected weights; 0 before the first step."""
        total = sum(p.numel() for p in self._params.values())
        fixed = sum(int(m.sum()) for m in self.masks.values())
        return fixed / total if total else 0.0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            "compress/inq_portion": self.portions[self.step - 1] if self.step else 0.0,
            "compress/inq_quantized_fraction": self.quantized_fraction(),
        }
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while self.step < len(self.portions):  # steps the fit did not reach (see the class docstring)
            self.quantize_step(trainer)
        self._write_fixed()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "values": {n: v.detach().cpu().clone() for n, v in self.values.items()},
            "pruned": {n: m.detach().cpu().clone() for n, m in self.pruned.items()},
            "n1": dict(self.n1),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict.get("step", 0))
        self.masks = {n: m.bool() for n, m in state_dict.get("masks", {}).items()}
        self.values = dict(state_dict.get("values", {}))
        self.pruned = {n: m.bool() for n, m in state_dict.get("pruned", {}).items()}
        self.n1 = {n: int(v) for n, v in state_dict.get("n1", {}).items()}
