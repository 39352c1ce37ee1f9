"""The training job behind ``train.py``: build everything from a Hydra config, fit, test, report."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from effdl_lightning.measure import register_macs_rule
from effdl_lightning.models.condconv import CondConv2d, condconv_macs, replace_convs_with_condconv_
from effdl_lightning.nas.job import run_search

log = logging.getLogger(__name__)

register_macs_rule(CondConv2d, condconv_macs)

#: optional keys of the `model` config that are not constructor arguments: `+model.conv=condconv` swaps every
#: nn.Conv2d for a CondConv2d with `model.conv_experts` experts (default 4) after the model is built
CONV_KEYS = ("conv", "conv_experts")
CONV_CHOICES = (None, "conv", "condconv")

#: ``conf/`` of a source checkout (where ``train.py`` lives)
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path,
    config_dir: str | Path | None = None,
    config_name: str = "train",
    keep_hydra: bool = False,
) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` as ``train.py`` would, for use from Python.

    ``hydra:`` interpolations resolve as in a real run, with the run folder at ``output_dir`` (data and logs
    under it too, unless overridden). ``run(compose([...], output_dir=...))`` is ``python train.py ...``.

    Args:
        overrides: Hydra overrides, e.g. ``["experiment=lenet5_mnist", "seed=1"]``.
        output_dir: the run folder.
        config_dir: the ``conf/`` folder; default: the one next to ``train.py`` in a source checkout.
        config_name: the root config.
        keep_hydra: keep the ``hydra`` node (``@hydra.main`` passes the job config without it).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    conf = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
    if not conf.is_dir():
        raise FileNotFoundError(f"config folder {conf} not found; pass config_dir=<your conf/ folder>")
    out = Path(output_dir).resolve()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        if "paths.data_dir" not in " ".join(overrides):
            cfg.paths.data_dir = str(out / "data")
        if not keep_hydra:
            del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


def _instantiate_named(group: DictConfig | None, kind: type, what: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-valued config group, in its order.

    ``null`` entries are skipped, so ``callbacks.early_stopping=null`` removes one callback from a preset.
    """
    objects: list[Any] = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise TypeError(f"config `{what}` must be a mapping of name -> config, got {type(group).__name__}")
    for key, conf in group.items():
        name = str(key)
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ValueError(f"config `{what}.{name}` has no `_target_`; every entry of `{what}` needs one")
        obj = instantiate(conf, _convert_="all")
        if not isinstance(obj, kind):
            raise TypeError(f"`{what}.{name}` built a {type(obj).__name__}, not a {kind.__name__}")
        objects.append(obj)
    return objects


def _init_parameters(conf: DictConfig) -> set[str]:
    """The argument names of the callable that ``conf._target_`` names (empty if it cannot be inspected)."""
    from hydra.utils import get_object

    try:
        return set(inspect.signature(get_object(str(conf._target_))).parameters)
    except (ValueError, TypeError, ImportError):
        return set()


def instantiate_model(node: DictConfig) -> nn.Module:
    """Build the network of a ``model`` config, then apply its optional ``conv`` switch (:data:`CONV_KEYS`).

    ``conv: condconv`` replaces every ``nn.Conv2d`` by a ``CondConv2d`` (arXiv 1904.04971) with
    ``conv_experts`` experts, computing the same outputs at the swap; ``conv: null`` or ``conv`` keeps the
    plain convolutions.
    """
    if not any(key in node for key in CONV_KEYS):
        return instantiate(node, _convert_="all")
    spec = OmegaConf.to_container(node, resolve=True)
    assert isinstance(spec, dict)
    conv = spec.pop("conv", None)
    experts = spec.pop("conv_experts", 4)
    if conv not in CONV_CHOICES:
        raise ValueError(f"`model.conv` must be one of {CONV_CHOICES}; got {conv!r}")
    model: nn.Module = instantiate(spec, _convert_="all")
    if conv == "condconv":
        swapped = replace_convs_with_condconv_(model, num_experts=int(experts))
        log.info("model.conv=condconv: %d Conv2d layers -> CondConv2d (%d experts)", len(swapped), experts)
    return model


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """Instantiate datamodule, model, LightningModule, callbacks (compression last), loggers and trainer."""
    # _convert_="all": objects receive plain lists and dicts, never OmegaConf containers (which would end up
    # in checkpoints' hyper-parameters and break loading them with weights_only=True)
    datamodule: pl.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model = instantiate_model(cfg.model)
    # the network is the module's `model`, or its `student` for a distillation module
    network_arg = "student" if "student" in _init_parameters(cfg.module) else "model"
    module: pl.LightningModule = instantiate(cfg.module, **{network_arg: model}, _convert_="all")
    callbacks: list[Callback] = _instantiate_named(cfg.get("callbacks"), Callback, "callbacks")
    callbacks += _instantiate_named(cfg.get("compression"), Callback, "compression")
    loggers: list[Logger] = _instantiate_named(cfg.get("logger"), Logger, "logger")
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )
    return datamodule, module, trainer


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _log_hyperparams(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for logger in loggers:
        logger.log_hyperparams(container)  # type: ignore[arg-type]


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the job described by ``cfg`` (see ``conf/train.yaml``) and return its final metrics.

    Steps: seed everything, build the parts, log the resolved config, ``fit`` (resuming from ``ckpt_path``
    when set) if ``cfg.train``, then ``test`` if ``cfg.test`` — on the weights at the end of fit, or on the
    checkpoint named by ``test_ckpt`` (``best``, ``last`` or a path). Returns every logged scalar metric
    (``train/*``, ``val/*``, ``test/*``, ``compress/*``).

    With ``nas`` set (``nas=mnas_soft``, see ``conf/nas/``) the job is the platform-aware architecture search
    instead: :func:`run_search_job`.
    """
    if cfg.get("nas") is not None:
        return run_search_job(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule, module, trainer = build(cfg)
    _log_hyperparams(trainer.loggers, cfg)

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        log.info(
            "Fitting %s on %s",
            type(module.model if hasattr(module, "model") else module).__name__,
            type(datamodule).__name__,
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_floats(trainer.callback_metrics))
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            after = getattr(callback, "after", None)
            if isinstance(after, dict):
                metrics.update(_floats(after))
    if cfg.get("test", True):
        ckpt = cfg.get("test_ckpt")
        if not cfg.get("train", True) and ckpt is None:
            ckpt = cfg.get("ckpt_path")
        if ckpt == "best" and not getattr(trainer.checkpoint_callback, "best_model_path", ""):
            log.warning("No best checkpoint was saved (e.g. fast_dev_run); testing the current weights.")
            ckpt = None
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update(_floats(trainer.callback_metrics))
    return metrics


def run_search_job(cfg: DictConfig) -> dict[str, float]:
    """``nas=...``: search (:func:`effdl_lightning.nas.job.run_search`), then, with ``nas.retrain``, train and
    test the best candidate as a normal job (same ``data``, ``module``, ``trainer``, callbacks and loggers).

    Returns the search's ``nas/*`` metrics and the retrained model's metrics.
    """
    outcome = run_search(cfg)
    metrics = dict(outcome.metrics)
    if cfg.nas.get("retrain", True):
        retrain = copy.deepcopy(cfg)
        with open_dict(retrain):
            retrain.nas = None
            retrain.model = outcome.model
        log.info("Retraining the best candidate: %s", outcome.result.best.key)
        metrics.update(run(retrain))
    return metrics


def metric_for_sweeper(cfg: DictConfig, metrics: Mapping[str, float]) -> float | None:
    """Return ``metrics[cfg.optimized_metric]`` for Hydra sweepers (Optuna), or ``None`` when unset."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged metrics: {sorted(metrics)}")
    return float(metrics[name])
