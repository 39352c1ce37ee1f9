"""The compression record: every structure change of a model, as plain data that rebuilds it.

A callback that changes a model's structure (removes channels, factorizes a layer, swaps in a quantized
module) appends an entry ``{"kind": ..., ...}`` to the model's record (:func:`append`). The record travels in
the Lightning checkpoint under :data:`CHECKPOINT_KEY`; :func:`replay` applies its entries, in order, to a
freshly built model of the same class, which then has the exact architecture of the compressed one, so
``Trainer.fit(ckpt_path=...)`` resumes after a cut and :func:`load_compressed` loads a compressed checkpoint
for inference without the training code.

Replayers are registered per kind (:func:`register_replayer`); ``channel_cut`` and ``quantize`` are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effdl_lightning.core.lowrank.factorize import apply_low_rank_entry
from effdl_lightning.core.quant.modules import apply_quantization_entry
from effdl_lightning.core.surgery import apply_cut

__all__ = [
    "CHECKPOINT_KEY",
    "append",
    "get_record",
    "load_compressed",
    "read_checkpoint_record",
    "register_replayer",
    "replay",
]

#: where the record lives in a Lightning checkpoint: ``{"target": "model", "entries": [...]}``
CHECKPOINT_KEY = "compression_record"
_ATTRIBUTE = "_effdl_compression_record"
_REPLAYERS: dict[str, Callable[[nn.Module, Mapping[str, Any]], None]] = {}


def register_replayer(kind: str, fn: Callable[[nn.Module, Mapping[str, Any]], None]) -> None:
    """Register how entries of ``kind`` are applied to a model (``fn(model, entry)``, in place)."""
    _REPLAYERS[kind] = fn


def _replay_channel_cut(model: nn.Module, entry: Mapping[str, Any]) -> None:
    apply_cut(model, entry)


register_replayer("channel_cut", _replay_channel_cut)
register_replayer("quantize", apply_quantization_entry)
register_replayer("low_rank", apply_low_rank_entry)


def get_record(model: nn.Module) -> list[dict[str, Any]]:
    """The entries applied to ``model`` so far (a list owned by the model; empty for a fresh model)."""
    record = model.__dict__.get(_ATTRIBUTE)
    if record is None:
        record = []
        model.__dict__[_ATTRIBUTE] = record
    return record


def append(model: nn.Module, entry: Mapping[str, Any]) -> None:
    """Record a structure change already applied to ``model``."""
    if "kind" not in entry:
        raise ValueError(f"a record entry needs a 'kind', got keys {sorted(entry)}")
    get_record(model).append(dict(entry))


def replay(model: nn.Module, entries: Sequence[Mapping[str, Any]]) -> int:
    """Apply the entries of ``entries`` that ``model`` does not have yet; returns how many were applied.

    A model whose own record is a prefix of ``entries`` gets the rest (so replaying twice is harmless); any
    other mismatch is an error.
    """
    done = get_record(model)
    if list(entries[: len(done)]) != done:
        raise ValueError(
            f"the model already carries {len(done)} structure change(s) that differ from the record's first ones"
        )
    applied = 0
    for entry in entries[len(done) :]:
        kind = entry.get("kind")
        if kind not in _REPLAYERS:
            raise ValueError(f"unknown compression record kind {kind!r}; known: {sorted(_REPLAYERS)}")
        _REPLAYERS[str(kind)](model, entry)
        done.append(dict(entry))
        applied += 1
    return applied


def read_checkpoint_record(checkpoint: Mapping[str, Any] | str | Path) -> dict[str, Any] | None:
    """The record stored in a checkpoint (a path or a loaded dict), or ``None`` if it has none."""
    loaded = (
        checkpoint
        if isinstance(checkpoint, Mapping)
        else torch.load(checkpoint, map_location="cpu", weights_only=False)
    )
    record = loaded.get(CHECKPOINT_KEY)
    return dict(record) if record else None


def _submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def load_compressed(
    model: nn.Module, checkpoint: Mapping[str, Any] | str | Path, strict: bool = True
) -> nn.Module:
    """Turn a freshly built ``model`` into the compressed one stored in ``checkpoint`` and load its weights.

    ``model`` is either the LightningModule the checkpoint was saved from (e.g. a ``ClassificationModule``
    built from the same config) or the bare network inside it (``pl_module.model``): the record names which
    submodule it applies to, and the state dict keys are matched accordingly. Returns ``model``.

        model = create("vgg_small", num_classes=10, input_shape=(1, 28, 28))
        load_compressed(model, "logs/.../last.ckpt")          # now the pruned network, weights loaded
    """
    loaded = (
        checkpoint
        if isinstance(checkpoint, Mapping)
        else torch.load(checkpoint, map_location="cpu", weights_only=False)
    )
    state = loaded.get("state_dict", loaded)
    record = read_checkpoint_record(loaded) or {"target": "", "entries": []}
    target = str(record.get("target", ""))
    own = dict(model.named_modules())
    if target and target in own:  # the LightningModule (or any module holding the target)
        replay(own[target], record["entries"])
        model.load_state_dict(state, strict=strict)
        return model
    prefix = f"{target}." if target else ""
    replay(model, record["entries"])
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
    model.load_state_dict(stripped, strict=strict)
    return model
