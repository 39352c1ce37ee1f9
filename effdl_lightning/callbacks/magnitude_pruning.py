"""Gradual magnitude pruning (Zhu & Gupta 2017) and Han et al.'s iterative pruning, as one callback."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.pruning import (
    CRITERIA,
    SCHEDULES,
    SCOPES,
    PruningSchedule,
    apply_masks_,
    layer_std,
    magnitude_masks,
    mask_gradients_,
    mask_optimizer_state_,
    sparsity_of,
    threshold_masks,
)
from effdl_lightning.core.selection import select_modules

# optimizers whose update of an element with zero weight, zero gradient and zero state is exactly zero
_ZERO_PRESERVING = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)

UNITS = ("step", "epoch")
PARAMETER_KINDS = ("weight", "bias")


class MagnitudePruning(Callback):
    """Prune weights gradually during ``fit``; pruned weights stay exactly zero.

    ``MagnitudePruning(target_sparsity=0.9)`` alone prunes every conv and linear weight of any model to 90 %
    sparsity with the cubic schedule of Zhu & Gupta (arXiv 1710.01878), from the first step to 75 % of the
    fit (the last quarter fine-tunes with frozen masks), in 10 events.

    Masks keep the largest ``|w|`` per layer (``scope="layer"``, as in the paper) or over all selected
    layers (``"global"``). ``schedule="iterative"`` is Han et al. (arXiv 1506.02626): each event prunes
    ``|w| < q_t·std(W)`` with the quality factor ``q_t`` ramping linearly to ``q``, then training retrains
    the survivors. ``criterion="random"`` is the control of every pruning study.

    Masked weights get no update: gradients are masked before the optimizer step and the optimizer state
    (momentum, Adam moments) at each pruning event — no forward hook, no second copy of the weights. With
    SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, NAdam or RAdam (exact types) a zero weight with
    a zero gradient and zero state stays exactly zero, so that is the whole per-step cost; any other
    optimizer (or ``remask_weights="always"``) also gets the weights re-masked after every step. At each
    epoch end the zeros are verified; a weight that moved (a hook or optimizer outside that set) is
    re-masked, with a warning, and per-step re-masking is switched on. The masks and the schedule position are in the checkpoint, so ``fit(ckpt_path=...)`` resumes
    mid-schedule. Under DDP every rank computes the same masks (weights are identical and the random
    criterion is seeded).

    Logs ``compress/sparsity`` (over the pruned tensors), ``compress/target_sparsity``,
    ``compress/params_nonzero`` (the whole model) and ``compress/sparsity/<tensor>`` per tensor.

    Args:
        target_sparsity: final fraction of pruned elements, in ``[0, 1)`` (unused by ``iterative``).
        schedule: ``cubic``, ``linear``, ``one_shot`` or ``iterative``.
        start: first pruning event, in ``unit``s.
        end: last pruning event, in ``unit``s; ``None`` = 75 % of the fit.
        frequency: ``unit``s between events; ``None`` = a tenth of ``end - start`` (at least 1).
        unit: ``"step"`` (optimizer steps) or ``"epoch"``.
        scope: ``"layer"`` or ``"global"``.
        layer_targets: ``{glob pattern on tensor names: final sparsity}`` overriding ``target_sparsity``
            (e.g. ``{"fc3.*": 0.5}``); with ``iterative`` the values are per-layer ``q``. Under ``global``
            scope the matched tensors are pruned per layer and left out of the global pool.
        criterion: ``magnitude`` or ``random``.
        include: glob patterns on module names to prune (default: every conv and linear).
        exclude: glob patterns on module names to leave dense (e.g. the classifier).
        parameters: which parameters of the selected modules: ``weight``, ``bias``.
        initial_sparsity: ``s_i`` of the schedule.
        q: quality factor of ``iterative`` (Han et al.'s threshold ``q·std``).
        make_permanent: at fit end, apply the masks one last time and release them; ``False`` keeps them
            active for a further ``fit``.
        seed: seed of the ``random`` criterion (the same on every rank).
        remask_weights: ``"auto"`` (re-mask the weights after each step only for optimizers outside the
            zero-preserving set above) or ``"always"``.
    """

    def __init__(
        self,
        target_sparsity: float = 0.9,
        schedule: str = "cubic",
        start: int = 0,
        end: int | None = None,
        frequency: int | None = None,
        unit: str = "step",
        scope: str = "layer",
        layer_targets: Mapping[str, float] | None = None,
        criterion: str = "magnitude",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        parameters: Sequence[str] = ("weight",),
        initial_sparsity: float = 0.0,
        q: float = 1.0,
        make_permanent: bool = True,
        seed: int = 0,
        remask_weights: str = "auto",
    ) -> None:
        def bad(name: str, value: object, allowed: str) -> MisconfigurationException:
            return MisconfigurationException(f"`{name}` must be {allowed}, got {value!r}")

        if not 0.0 <= target_sparsity < 1.0:
            raise bad("target_sparsity", target_sparsity, "in [0, 1)")
        if not 0.0 <= initial_sparsity <= target_sparsity:
            raise bad("initial_sparsity", initial_sparsity, f"in [0, target_sparsity={target_sparsity}]")
        if schedule not in SCHEDULES:
            raise bad("schedule", schedule, f"one of {SCHEDULES}")
        if unit not in UNITS:
            raise bad("unit", unit, f"one of {UNITS}")
        if scope not in SCOPES:
            raise bad("scope", scope, f"one of {SCOPES}")
        if criterion not in CRITERIA:
            raise bad("criterion", criterion, f"one of {CRITERIA}")
        if start < 0:
            raise bad("start", start, ">= 0")
        if end is not None and end < start:
            raise MisconfigurationException(f"`end` ({end}) is before `start` ({start})")
        if frequency is not None and frequency < 1:
            raise bad("frequency", frequency, ">= 1")
        kinds = tuple(parameters)
        if not kinds or any(k not in PARAMETER_KINDS for k in kinds):
            raise bad("parameters", list(kinds), f"a non-empty subset of {PARAMETER_KINDS}")
        if q <= 0:
            raise bad("q", q, "> 0")
        for pattern, value in (layer_targets or {}).items():
            limit_ok = value > 0 if schedule == "iterative" else 0.0 <= value < 1.0
            if not limit_ok:
                allowed = "> 0 (a q factor)" if schedule == "iterative" else "in [0, 1)"
                raise bad(f"layer_targets[{pattern!r}]", value, allowed)
        self.target_sparsity = float(target_sparsity)
        self.schedule_kind = schedule
        self.start, self.end, self.frequency, self.unit = start, end, frequency, unit
        self.scope = scope
        self.layer_targets = dict(layer_targets or {})
        self.criterion = criterion
        self.include, self.exclude = include, exclude
        self.parameters = kinds
        self.initial_sparsity = float(initial_sparsity)
        self.q = float(q)
        self.make_permanent = make_permanent
        self.seed = int(seed)
        if remask_weights not in ("auto", "always"):
            raise bad("remask_weights", remask_weights, "'auto' or 'always'")
        self.remask_weights = remask_weights

        self.schedule: PruningSchedule | None = None
        self.masks: dict[str, Tensor] = {}
        self.last_event = -1
        self._params: dict[str, nn.Parameter] = {}
        self._stds: dict[str, float] = {}
        self._overrides: dict[str, float] = {}
        # the masks as 0/1 in each parameter's dtype: the per-step products run ~8x faster than with a bool
        # mask, which PyTorch would convert to float on every call (one mask-sized buffer per tensor)
        self._factors: dict[str, Tensor] = {}
        self._remask_weights = True

    # --- selection -----------------------------------------------------------------------------------
    def _select(self, model: nn.Module) -> None:
        try:
            modules = select_modules(model, self.include, self.exclude)
        except ValueError as err:
            raise MisconfigurationException(f"MagnitudePruning: {err}") from err
        params: dict[str, nn.Parameter] = {}
        for mod_name, module in modules.items():
            for kind in self.parameters:
                p = getattr(module, kind, None)
                if isinstance(p, nn.Parameter):
                    params[f"{mod_name}.{kind}"] = p
        self._params = params
        self._overrides = {}
        for pattern, value in self.layer_targets.items():
            matched = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise MisconfigurationException(
                    f"MagnitudePruning: layer_targets pattern {pattern!r} matches no pruned tensor; "
                    f"pruned tensors: {', '.join(params)}"
                )
            for n in matched:
                self._overrides.setdefault(n, float(value))

    def _build_schedule(self, trainer: pl.Trainer) -> PruningSchedule:
        total = trainer.estimated_stepping_batches
        steps_per_unit = 1
        if self.unit == "epoch":
            if not trainer.max_epochs or trainer.max_epochs < 1:
                raise MisconfigurationException(
                    "MagnitudePruning(unit='epoch') needs `Trainer(max_epochs=...)`"
                )
            steps_per_unit = max(1, int(total) // trainer.max_epochs)
        if self.end is None:
            if not math.isfinite(total):
                raise MisconfigurationException(
                    "MagnitudePruning cannot place the schedule's end in an endless fit: pass `end=`"
                )
            end = int(0.75 * total)
        else:
            end = self.end * steps_per_unit
        start = min(self.start * steps_per_unit, end)
        frequency = self.frequency * steps_per_unit if self.frequency else max(1, (end - start) // 10)
        return PruningSchedule(
            self.schedule_kind, start, end, frequency, self.initial_sparsity, self.target_sparsity
        )

    # --- hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._select(target_model(pl_module))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule = self._build_schedule(trainer)
        self._remask_weights = self.remask_weights == "always" or not all(
            type(opt) in _ZERO_PRESERVING for opt in trainer.optimizers
        )
        if self.masks:  # resumed (or a second fit): re-bind the restored masks to this model's parameters
            missing = sorted(set(self.masks) - set(self._params))
            if missing:
                raise MisconfigurationException(
                    f"MagnitudePruning: restored masks name unknown tensors {missing}"
                )
            self.masks = {n: m.to(self._params[n].device) for n, m in self.masks.items()}
            self._set_factors()
            apply_masks_(self._params, self._factors)

    def _targets(self, step: int) -> dict[str, float]:
        """Each tensor's target at ``step`` (for ``iterative``: its quality factor ``q_t``)."""
        assert self.schedule is not None
        if self.schedule_kind == "iterative":
            ramp = self.schedule.fraction(step)
            return {n: ramp * self._overrides.get(n, self.q) for n in self._params}
        return {n: self.schedule.sparsity(step, self._overrides.get(n)) for n in self._params}

    def prune(self, trainer: pl.Trainer, step: int) -> None:
        """Run one pruning event at ``step``: update the masks, zero weights and optimizer state."""
        weights = {n: p.detach() for n, p in self._params.items()}
        targets = self._targets(step)
        current = self.masks or None
        if self.schedule_kind == "iterative":
            if not self._stds:
                self._stds = {n: layer_std(w) for n, w in weights.items()}
            masks = threshold_masks(weights, targets, self._stds, current)
        else:
            generator = (
                torch.Generator().manual_seed(self.seed + step) if self.criterion == "random" else None
            )
            if self.scope == "layer":
                masks = magnitude_masks(weights, targets, "layer", self.criterion, current, generator)
            else:
                pooled = {n: w for n, w in weights.items() if n not in self._overrides}
                own = {n: w for n, w in weights.items() if n in self._overrides}
                masks = {}
                if pooled:
                    global_target = targets[next(iter(pooled))]
                    masks.update(
                        magnitude_masks(pooled, global_target, "global", self.criterion, current, generator)
                    )
                if own:
                    masks.update(magnitude_masks(own, targets, "layer", self.criterion, current, generator))
        self.masks = masks
        self.last_event = step
        self._set_factors()
        apply_masks_(self._params, self._factors)
        for optimizer in trainer.optimizers:
            mask_optimizer_state_(optimizer, self._params, self._factors)

    def on_structure_change(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sliced: Mapping[str, Mapping[str, Tensor]]
    ) -> None:
        """Called by a structure-changing callback after it replaced parameters (e.g. removed channels).

        The pruned tensors are re-bound by name and their masks sliced to the kept indices, so unstructured
        sparsity survives a structural cut (the documented order: structure changes, then masks).
        """
        self._select(target_model(pl_module))
        masks = {}
        for name, mask in self.masks.items():
            for dim, idx in sliced.get(name, {}).items():
                mask = mask.index_select(int(dim), idx.to(mask.device))
            if name not in self._params or mask.shape != self._params[name].shape:
                raise MisconfigurationException(
                    f"MagnitudePruning: after a structure change the mask of {name!r} has shape "
                    f"{tuple(mask.shape)} but the tensor is gone or has another shape"
                )
            masks[name] = mask
        self.masks = masks
        if self.masks:
            self._set_factors()
            apply_masks_(self._params, self._factors)

    def _set_factors(self) -> None:
        self._factors = {n: m.to(dtype=self._params[n].dtype) for n, m in self.masks.items()}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.schedule is not None and step > self.last_event and self.schedule.is_event(step):
            self.prune(trainer, step)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._factors:
            mask_gradients_(self._params, self._factors)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # With a zero gradient and zero optimizer state, the optimizers of `_ZERO_PRESERVING` leave a zero
        # weight at exactly zero (weight decay of 0 is 0, moments stay 0), so the masked gradient is enough;
        # any other optimizer gets its weights re-masked after every step.
        if self._factors and self._remask_weights:
            apply_masks_(self._params, self._factors)

    def _check_zeros(self) -> None:
        """Verify that the pruned weights are still zero; if not, re-mask them and from now on every step."""
        moved = [n for n, f in self._factors.items() if bool((self._params[n].detach() * (1 - f)).any())]
        if moved:
            apply_masks_(self._params, self._factors)
            if not self._remask_weights:
                rank_zero_warn(
                    f"MagnitudePruning: pruned weights of {moved} moved away from zero (an optimizer or "
                    "hook outside the zero-preserving set); re-masking the weights after every step from now on"
                )
                self._remask_weights = True

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """``compress/*`` metrics of the current masks."""
        assert self.schedule is not None
        out = {
            "compress/sparsity": sparsity_of(self.masks) if self.masks else 0.0,
            "compress/params_nonzero": float(sum(int(torch.count_nonzero(p)) for p in model.parameters())),
        }
        if self.schedule_kind != "iterative":
            out["compress/target_sparsity"] = self.schedule.sparsity(max(self.last_event, 0))
        for name, mask in self.masks.items():
            out[f"compress/sparsity/{name}"] = 1.0 - float(mask.float().mean())
        return out

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._factors:
            self._check_zeros()
        if self.schedule is not None:
            # the masks are identical on every rank: no reduction needed
            metrics = self.metrics(target_model(pl_module))
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._factors:
            apply_masks_(self._params, self._factors)
            if self.make_permanent:
                self.masks, self._factors = {}, {}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "last_event": self.last_event,
            "stds": dict(self._stds),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = {n: m.bool() for n, m in state_dict.get("masks", {}).items()}
        self.last_event = int(state_dict.get("last_event", -1))
        self._stds = dict(state_dict.get("stds", {}))
