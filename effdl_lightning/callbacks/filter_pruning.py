"""Filter pruning (Li et al. 2016) that removes channels physically during ``fit``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.structure import StructureChangingCallback
from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.selection import DEFAULT_LAYER_TYPES, select_modules
from effdl_lightning.core.structured import CRITERIA, budget_ratio, filter_pruning_plan
from effdl_lightning.core.surgery import ChannelGraph, SurgeryError

__all__ = ["FilterPruning", "example_shape"]


def example_shape(pl_module: pl.LightningModule, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The input shape without batch: the argument, else the LightningModule's ``example_input_array``."""
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, Tensor):
        return tuple(example.shape[1:])
    raise MisconfigurationException(
        f"{type(pl_module).__name__} has no `example_input_array`: pass `input_shape=` (without batch) to the "
        "structured pruning callback"
    )


class FilterPruning(StructureChangingCallback):
    """Li et al. (arXiv 1608.08710): remove the filters with the smallest L1 norm, channels and all.

    ``FilterPruning(ratio=0.5)`` alone removes half of the channels of every prunable channel group of any
    model at the start of the fit. A *group* is a set of channels that must go together (found by
    :class:`effdl_lightning.core.surgery.ChannelGraph`): one conv's outputs in a plain CNN, every conv adding
    into a residual stream in a ResNet; the score of a coupled channel is the sum of its filters' norms.
    The filters, their BN entries and the next layers' input kernels are removed physically; the optimizer
    and LR schedulers are rebuilt (surviving momentum kept), DDP is re-wrapped, and the cut is recorded in
    the checkpoint: ``fit(ckpt_path=...)`` resumes after it and :func:`effdl_lightning.load_compressed` loads
    the pruned checkpoint into a freshly built model.

    Targets (one of): ``ratio`` (fraction of each group's prunable channels, per-layer overrides in
    ``layer_ratios``), or ``target_macs`` / ``target_params`` (fraction of the model's MACs / parameters to
    keep, reached by bisection on one common ratio; ``layer_ratios`` are then kept fixed).

    Schedule: ``events`` cuts at the starts of epochs evenly spaced from ``start_epoch`` to ``end_epoch``
    (one-shot by default); event ``k`` of ``K`` reaches ``(k+1)/K`` of the final reduction (ratio or
    cost), each measured against the model as it was before the first cut.

    Logs ``compress/macs``, ``compress/params`` and ``compress/channels_removed``.

    Args:
        ratio: fraction of each group's prunable channels to remove, in ``[0, 1)``.
        layer_ratios: ``{glob pattern on a group's layer names: ratio}`` overriding ``ratio``.
        target_macs: keep this fraction of the MACs (``(0, 1]``), instead of ``ratio``.
        target_params: keep this fraction of the parameters (``(0, 1]``), instead of ``ratio``.
        criterion: ``l1`` (Li et al.), ``l2``, or ``random`` (the control).
        include: glob patterns on layer names whose output channels may be removed (default: all).
        exclude: glob patterns on layer names whose output channels are kept (e.g. the classifier; the
            model's outputs are always kept).
        start_epoch: epoch of the first cut.
        end_epoch: epoch of the last cut (default: ``start_epoch``).
        events: number of cuts.
        input_shape: input without batch for tracing and MACs (default: the module's example input).
        min_channels: channels every layer keeps at least.
        round_to: round every group's kept width to a multiple of this (8 matches the CPU conv kernels'
            channel blocks; see :func:`effdl_lightning.core.structured.filter_pruning_plan`).
        seed: seed of the ``random`` criterion (the same on every rank).
    """

    def __init__(
        self,
        ratio: float | None = 0.5,
        layer_ratios: Mapping[str, float] | None = None,
        target_macs: float | None = None,
        target_params: float | None = None,
        criterion: str = "l1",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        events: int = 1,
        input_shape: Sequence[int] | None = None,
        min_channels: int = 1,
        round_to: int = 1,
        seed: int = 0,
    ) -> None:
        def bad(name: str, value: object, allowed: str) -> MisconfigurationException:
            return MisconfigurationException(f"FilterPruning: `{name}` must be {allowed}, got {value!r}")

        targets = [
            n for n, v in (("target_macs", target_macs), ("target_params", target_params)) if v is not None
        ]
        if len(targets) > 1:
            raise bad("target_macs/target_params", targets, "at most one of them")
        if targets:
            value = target_macs if target_macs is not None else target_params
            if value is None or not 0.0 < value <= 1.0:
                raise bad(targets[0], value, "in (0, 1]")
            ratio = None
        elif ratio is None and not layer_ratios:
            raise bad("ratio", ratio, "given (or layer_ratios, target_macs, target_params)")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise bad("ratio", ratio, "in [0, 1)")
        for pattern, value in (layer_ratios or {}).items():
            if not 0.0 <= float(value) < 1.0:
                raise bad(f"layer_ratios[{pattern!r}]", value, "in [0, 1)")
        if criterion not in CRITERIA:
            raise bad("criterion", criterion, f"one of {CRITERIA}")
        if start_epoch < 0:
            raise bad("start_epoch", start_epoch, ">= 0")
        if end_epoch is not None and end_epoch < start_epoch:
            raise MisconfigurationException(
                f"FilterPruning: `end_epoch` ({end_epoch}) is before `start_epoch` ({start_epoch})"
            )
        if events < 1:
            raise bad("events", events, ">= 1")
        if min_channels < 1:
            raise bad("min_channels", min_channels, ">= 1")
        if round_to < 1:
            raise bad("round_to", round_to, ">= 1")
        self.ratio = ratio
        self.layer_ratios = dict(layer_ratios or {})
        self.target_macs = target_macs
        self.target_params = target_params
        self.criterion = criterion
        self.include = include
        self.exclude = exclude
        self.start_epoch = start_epoch
        self.end_epoch = start_epoch if end_epoch is None else end_epoch
        self.events = events
        self.input_shape = input_shape
        self.min_channels = min_channels
        self.round_to = round_to
        self.seed = seed
        self.events_done = 0
        self.initial: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # --- schedule --------------------------------------------------------------------------------------------
    def event_epochs(self) -> list[int]:
        """The epochs at whose start the cuts happen."""
        if self.events == 1:
            return [self.start_epoch]
        span = self.end_epoch - self.start_epoch
        return [self.start_epoch + round(k * span / (self.events - 1)) for k in range(self.events)]

    # --- costs ------------------------------------------------------------------------------------------------
    def _costs(self, model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
        from effdl_lightning.measure import profile

        report = profile(model, shape, latency=False)
        return {"macs": float(report.macs), "params": float(sum(p.numel() for p in model.parameters()))}

    def _excluded(self, model: nn.Module) -> list[str]:
        try:
            kept = select_modules(model, None, self.exclude) if self.exclude else {}
            chosen = select_modules(model, self.include, None) if self.include else None
        except ValueError as err:
            raise MisconfigurationException(f"FilterPruning: {err}") from err
        eligible = {n for n, m in model.named_modules() if isinstance(m, DEFAULT_LAYER_TYPES)}
        out = set()
        if self.exclude:
            out |= eligible - set(kept)
        if chosen is not None:
            out |= eligible - set(chosen)
        return sorted(out)

    # --- hooks ------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._excluded(target_model(pl_module))  # patterns that match nothing fail before training

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = self.event_epochs()
        if self.events_done >= len(epochs) or trainer.current_epoch < epochs[self.events_done]:
            return
        self.cut(trainer, pl_module)

    def cut(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Run the next cut now (what ``on_train_epoch_start`` does at an event epoch)."""
        shape = example_shape(pl_module, self.input_shape)
        model = target_model(pl_module)
        if not self.initial:
            self.initial = self._costs(model, shape)
        k, total = self.events_done + 1, self.events
        exclude = self._excluded(model)

        def change(model: nn.Module) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
            graph = ChannelGraph(model, shape, exclude=exclude)
            plan = self._plan(graph, model, shape, k / total)
            cut = graph.cut(plan)
            return cut.to_dict(), graph.sliced

        entry = self.change_structure(trainer, pl_module, change)
        self.events_done += 1
        costs = self._costs(model, shape)
        info = {
            "event": self.events_done,
            "epoch": trainer.current_epoch,
            "macs": costs["macs"],
            "params": costs["params"],
            "macs_fraction": costs["macs"] / self.initial["macs"],
            "params_fraction": costs["params"] / self.initial["params"],
            "layers_changed": len(entry["modules"]),
        }
        self.history.append(info)
        rank_zero_info(
            f"FilterPruning event {self.events_done}/{total} at epoch {trainer.current_epoch}: MACs "
            f"{self.initial['macs']:,.0f} -> {costs['macs']:,.0f} ({info['macs_fraction']:.3f}), params "
            f"{self.initial['params']:,.0f} -> {costs['params']:,.0f} ({info['params_fraction']:.3f})"
        )
        return info

    def _plan(
        self, graph: ChannelGraph, model: nn.Module, shape: tuple[int, ...], progress: float
    ) -> dict[str, list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.events_done)
        if self.ratio is not None or (self.target_macs is None and self.target_params is None):
            # cumulative ratio (against the original channel counts) turned into this event's ratio
            def step_ratio(final: float) -> float:
                done = final * (progress - 1 / self.events)
                now = final * progress
                return 1.0 - (1.0 - now) / (1.0 - done) if done < 1 else 0.0

            layer = {p: step_ratio(v) for p, v in self.layer_ratios.items()}
            return filter_pruning_plan(
                graph,
                step_ratio(self.ratio or 0.0),
                layer,
                self.criterion,
                gen,
                self.min_channels,
                self.round_to,
            )
        key = "macs" if self.target_macs is not None else "params"
        final = self.target_macs if self.target_macs is not None else self.target_params
        assert final is not None
        goal = (1.0 - (1.0 - final) * progress) * self.initial[key]
        seed = self.seed + self.events_done
        try:
            ratio = budget_ratio(
                graph,
                lambda m: self._costs(m, shape)[key],
                goal,
                self.criterion,
                self.layer_ratios,
                seed,
                self.min_channels,
                iterations=12,
                round_to=self.round_to,
            )
        except SurgeryError as err:
            raise MisconfigurationException(
                f"FilterPruning cannot reach target_{key}={final}: {err}"
            ) from err
        gen = torch.Generator().manual_seed(seed)
        return filter_pruning_plan(
            graph, ratio, self.layer_ratios, self.criterion, gen, self.min_channels, self.round_to
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.history:
            last = self.history[-1]
            pl_module.log_dict(
                {
                    "compress/macs": float(last["macs"]),
                    "compress/params": float(last["params"]),
                    "compress/macs_fraction": float(last["macs_fraction"]),
                },
                on_step=False,
                on_epoch=True,
                rank_zero_only=True,
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"events_done": self.events_done, "initial": dict(self.initial), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events_done = int(state_dict.get("events_done", 0))
        self.initial = dict(state_dict.get("initial", {}))
        self.history = list(state_dict.get("history", []))
