"""Structure changes in the middle of ``fit``: rebuild optimizers and schedulers, re-wrap DDP, record, resume.

:class:`StructureChangingCallback` is the base of every callback that replaces parameters (channel pruning,
low-rank factorization, module swaps). A subclass calls :meth:`StructureChangingCallback.change_structure`
with a function that edits the model and returns an entry of the compression record
(:mod:`effdl_lightning.core.record`). Around that call the base class

* keeps the optimizer state of every parameter that survives, sliced to the kept indices when the change
  reports them (momentum of a pruned conv keeps its surviving filters' momentum),
* rebuilds the optimizers and LR schedulers through ``configure_optimizers`` and restores the schedulers'
  position and each parameter group's current hyperparameters (the LR the schedule has reached),
* wraps the model in ``DistributedDataParallel`` again under DDP (every rank makes the same change),
* appends the entry to the model's record, which ``on_save_checkpoint`` writes into the checkpoint,
* calls ``on_structure_change(trainer, pl_module, sliced)`` on every other callback that defines it (e.g.
  ``MagnitudePruning`` re-binds its tensors and slices its masks).

On ``fit(ckpt_path=...)`` (and ``validate``/``test``/``predict`` with a checkpoint) the base class replays the
checkpoint's record on the freshly built model *before* Lightning loads the weights, so the checkpoint loads and training resumes
after the change. :func:`effdl_lightning.load_compressed` does the same outside a Trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core import record as compression_record

__all__ = ["StructureChangingCallback", "restructure"]

Sliced = Mapping[str, Mapping[str, Tensor]]


def _target_path(pl_module: pl.LightningModule) -> str:
    model = target_model(pl_module)
    for name, module in pl_module.named_modules():
        if module is model:
            return name
    return ""


def restructure(
    trainer: pl.Trainer, pl_module: pl.LightningModule, change: Callable[[], Sliced | None]
) -> None:
    """Run ``change()`` (which replaces parameters of ``pl_module``) and rebuild what depends on them.

    ``change`` may return ``{parameter name (relative to pl_module): {dim: kept indices}}`` for parameters
    that were sliced; their optimizer state is sliced the same way. Parameters whose name survives with the
    same shape keep their state as is; new parameters start with empty state.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise MisconfigurationException(
            f"changing the model's structure during fit is supported with the single-device and DDP "
            f"strategies, not {type(strategy).__name__}"
        )
    old_names = {id(p): n for n, p in pl_module.named_parameters()}
    old_states: list[dict[str, dict[str, Any]]] = []  # per optimizer: name -> {"shape", "state"}
    old_groups: list[list[dict[str, Any]]] = []
    for optimizer in trainer.optimizers:
        per_name: dict[str, dict[str, Any]] = {}
        for p, state in optimizer.state.items():
            if id(p) in old_names:
                per_name[old_names[id(p)]] = {"shape": tuple(p.shape), "state": dict(state)}
        old_states.append(per_name)
        old_groups.append([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    old_schedulers = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]

    with torch.no_grad():
        sliced = dict(change() or {})

    strategy.setup_optimizers(trainer)
    new_params = dict(pl_module.named_parameters())
    for optimizer, per_name, groups in zip(trainer.optimizers, old_states, old_groups, strict=False):
        if len(groups) == len(optimizer.param_groups):
            for group, old in zip(optimizer.param_groups, groups, strict=True):
                group.update(old)
        for name, saved in per_name.items():
            param = new_params.get(name)
            if param is None:
                continue
            state = {}
            for key, value in saved["state"].items():
                if isinstance(value, Tensor) and tuple(value.shape) == saved["shape"]:
                    for dim, idx in sliced.get(name, {}).items():
                        value = value.index_select(int(dim), idx.to(value.device))
                    if value.shape != param.shape:
                        state = {}
                        break
                    state[key] = value.clone()
                else:
                    state[key] = value.clone() if isinstance(value, Tensor) else value
            if state:
                optimizer.state[param] = state
    for cfg, saved_state in zip(trainer.lr_scheduler_configs, old_schedulers, strict=False):
        cfg.scheduler.load_state_dict(saved_state)
    if isinstance(strategy, DDPStrategy):
        module = strategy.lightning_module
        assert module is not None
        strategy.model = strategy._setup_model(module)  # DDP registers the new parameters
        strategy._register_ddp_hooks()


class StructureChangingCallback(Callback):
    """Base class: record, checkpoint and replay structure changes (see the module docstring)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning loads a checkpoint's weights after `setup` through the strategy; the record must be
        # replayed on the freshly built model first. No callback hook runs between the two, so the strategy's
        # loader is wrapped for this run (once, whatever the number of structure-changing callbacks).
        strategy = trainer.strategy
        if getattr(strategy, "_effdl_replays_record", False):
            return
        original = strategy.load_model_state_dict

        def load_model_state_dict(checkpoint: Mapping[str, Any], strict: bool = True) -> Any:
            stored = checkpoint.get(compression_record.CHECKPOINT_KEY)
            if stored:
                module = strategy.lightning_module
                assert module is not None
                target = module.get_submodule(stored["target"]) if stored.get("target") else module
                compression_record.replay(target, stored["entries"])
            return original(checkpoint, strict=strict)

        strategy.load_model_state_dict = load_model_state_dict  # type: ignore[method-assign]
        strategy._effdl_replays_record = True  # type: ignore[attr-defined]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if getattr(strategy, "_effdl_replays_record", False):
            strategy.__dict__.pop("load_model_state_dict", None)
            strategy._effdl_replays_record = False  # type: ignore[attr-defined]

    def change_structure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        change: Callable[[nn.Module], tuple[Mapping[str, Any], Sliced | None]],
    ) -> Mapping[str, Any]:
        """Apply ``change(model) -> (record entry, sliced)`` to the target model, rebuild, and record it."""
        model = target_model(pl_module)
        prefix = _target_path(pl_module)
        entry: dict[str, Any] = {}
        own: dict[str, Mapping[str, Tensor]] = {}

        def run() -> Sliced:
            made, sliced = change(model)
            entry.update(made)
            own.update(sliced or {})
            return {f"{prefix}.{k}" if prefix else k: v for k, v in own.items()}

        restructure(trainer, pl_module, run)
        compression_record.append(model, entry)
        # other callbacks holding parameters (masks, codebooks) re-bind them; names relative to the model
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            hook = getattr(callback, "on_structure_change", None)
            if callback is not self and callable(hook):
                hook(trainer, pl_module, own)
        return entry

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        entries = compression_record.get_record(target_model(pl_module))
        if entries:
            checkpoint[compression_record.CHECKPOINT_KEY] = {
                "target": _target_path(pl_module),
                "entries": [dict(e) for e in entries],
            }
