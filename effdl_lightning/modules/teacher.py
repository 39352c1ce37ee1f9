"""Build a distillation teacher from a model object, a Lightning checkpoint, or ``_target_`` plus weights."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from lightning.pytorch import LightningModule
from torch import nn

from effdl_lightning.core.record import load_compressed, read_checkpoint_record

__all__ = ["TeacherSpec", "instantiate_target", "load_teacher", "load_teacher_checkpoint"]

log = logging.getLogger(__name__)

#: a network, a Lightning checkpoint path, or ``{"model": ..., "ckpt_path": ..., "weights_path": ...}``
TeacherSpec = Union[nn.Module, str, "os.PathLike[str]", Mapping[str, Any]]

_KEYS = ("model", "ckpt_path", "weights_path")
_PREFIXES = ("model.", "student.")  # ClassificationModule, DistillationModule


def _locate(path: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ValueError(f"cannot import `_target_` {path!r}: no such module or attribute")


def instantiate_target(spec: Any) -> Any:
    """Build ``{"_target_": "pkg.Class", **kwargs}`` (nested ones first), as Hydra's ``instantiate`` would.

    Keys starting with ``_`` other than ``_target_`` are ignored; values without ``_target_`` pass through.
    """
    if isinstance(spec, Mapping):
        built = {k: instantiate_target(v) for k, v in spec.items() if not str(k).startswith("_")}
        if "_target_" not in spec:
            return built
        return _locate(str(spec["_target_"]))(**built)
    if isinstance(spec, (list, tuple)):
        return type(spec)(instantiate_target(v) for v in spec)
    return spec


def _network(obj: nn.Module) -> nn.Module:
    """The bare network of a LightningModule wrapper (a ClassificationModule's ``model``, a student)."""
    if isinstance(obj, LightningModule):
        for name in ("student", "model"):
            inner = getattr(obj, name, None)
            if isinstance(inner, nn.Module):
                return inner
    return obj


def _model_from_run_config(ckpt: Path) -> nn.Module | None:
    """The ``model`` of the ``train.py`` run that wrote ``ckpt`` (``<run>/.hydra/config.yaml``), if found."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        config = folder / ".hydra" / "config.yaml"
        if config.is_file():
            from omegaconf import DictConfig, OmegaConf  # Hydra's config library, there wherever train.py ran

            run_config = OmegaConf.load(config)
            node = run_config.get("model") if isinstance(run_config, DictConfig) else None
            if node is None:
                return None
            model = instantiate_target(OmegaConf.to_container(node, resolve=True))
            log.info("Teacher architecture from %s: %s", config, type(model).__name__)
            return model if isinstance(model, nn.Module) else None
    return None


def load_teacher_checkpoint(model: nn.Module, ckpt_path: str | os.PathLike[str]) -> nn.Module:
    """Load a Lightning checkpoint's network weights into ``model`` (in place) and return it.

    The checkpoint is a ``ClassificationModule``'s (keys ``model.*``) or a ``DistillationModule``'s (keys
    ``student.*``). A compression record in it (pruned channels, quantized layers) is replayed on ``model``
    first through :func:`effdl_lightning.core.record.load_compressed`, so a compressed teacher loads too.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} not found")
    # a checkpoint the user names (as load_compressed does); callbacks' states may hold plain objects
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    state = loaded.get("state_dict") if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"teacher checkpoint {str(path)!r} is not a Lightning checkpoint (no 'state_dict'); a plain state "
            "dict of the network goes in `weights_path`"
        )
    if read_checkpoint_record(loaded):
        return load_compressed(model, loaded)
    for prefix in _PREFIXES:
        if any(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if str(k).startswith(prefix)}
            break
    model.load_state_dict(state)
    return model


def load_teacher(spec: TeacherSpec) -> tuple[nn.Module, str]:
    """Build the teacher network described by ``spec``; returns it and a one-line description of its source.

    ``spec`` is one of

    * an ``nn.Module`` (a ``ClassificationModule`` gives its ``model``), used as is;
    * a path to a Lightning checkpoint written by ``train.py`` (the architecture comes from the run's
      ``.hydra/config.yaml``; any compression record is replayed);
    * a mapping with ``model`` (an ``nn.Module`` or a ``{"_target_": ...}`` config) and at most one of
      ``ckpt_path`` (a Lightning checkpoint) and ``weights_path`` (a plain ``state_dict`` of the network).
      Without either the teacher keeps its random initialization and a WARNING is logged: a placeholder
      for smoke tests (``fast_dev_run``), not a teacher.

    Raises:
        ValueError: an unknown key, both paths, or no way to build the architecture.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(spec, nn.Module):
        return _network(spec), f"the given {type(_network(spec)).__name__}"
    if isinstance(spec, (str, os.PathLike)):
        spec = {"ckpt_path": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"`teacher` must be an nn.Module, a checkpoint path or a mapping with keys {_KEYS}, "
            f"got {type(spec).__name__}"
        )
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ValueError(f"`teacher` has unknown key(s) {unknown}; allowed: {list(_KEYS)}")
    ckpt, weights = spec.get("ckpt_path"), spec.get("weights_path")
    if ckpt is not None and weights is not None:
        raise ValueError(
            f"`teacher` takes one of `ckpt_path` and `weights_path`, got both: {ckpt!r} and {weights!r}"
        )
    model_spec = spec.get("model")
    if isinstance(model_spec, Mapping):
        if "_target_" not in model_spec:
            raise ValueError(f"`teacher.model` needs a `_target_`, got keys {sorted(model_spec)}")
        model_spec = instantiate_target(model_spec)
    if model_spec is not None and not isinstance(model_spec, nn.Module):
        raise TypeError(
            f"`teacher.model` must be an nn.Module or a `_target_` config, got {type(model_spec).__name__}"
        )
    model = _network(model_spec) if model_spec is not None else None
    if model is None and ckpt is not None:
        model = _model_from_run_config(Path(ckpt))
    if model is None:
        raise ValueError(
            "`teacher` needs its architecture: give `teacher.model` (an nn.Module or a `_target_` config), or a "
            "checkpoint written by train.py (whose run folder holds .hydra/config.yaml)"
        )
    if ckpt is not None:
        load_teacher_checkpoint(model, ckpt)
        return model, f"{type(model).__name__} from checkpoint {str(ckpt)!r}"
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"teacher weights file {str(path)!r} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            raise ValueError(f"{str(path)!r} is a Lightning checkpoint; pass it as `teacher.ckpt_path`")
        model.load_state_dict(state)
        return model, f"{type(model).__name__} with weights {str(path)!r}"
    log.warning(
        "DistillationModule: the teacher %s has RANDOM weights (no `teacher.ckpt_path` or `teacher.weights_path`); "
        "fine for a smoke test, useless for distillation. Train the teacher first and pass "
        "module.teacher.ckpt_path=<run>/checkpoints/last.ckpt",
        type(model).__name__,
    )
    return model, f"{type(model).__name__} with random weights"
