"""Every config in conf/ composes and instantiates; every experiment runs under fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from effdl_lightning.run import build, metric_for_sweeper, run

from .conftest import CONF_DIR, ComposeFn


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_builds_the_documented_job(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg()
    assert cfg.model._target_.endswith("LeNet5")
    assert cfg.data._target_.endswith("MNISTSubsetDataModule")
    assert cfg.get("compression") is None
    datamodule, module, trainer = build(cfg)
    assert isinstance(datamodule, LightningDataModule)
    assert isinstance(module, LightningModule)
    assert isinstance(trainer, Trainer)
    names = {type(c).__name__ for c in trainer.callbacks}  # type: ignore[attr-defined]
    assert {"ModelCheckpoint", "CompressionReport", "LearningRateMonitor"} <= names


@pytest.mark.parametrize("name", _options("data"))
def test_every_data_config_instantiates(compose_cfg: ComposeFn, name: str) -> None:
    cfg = compose_cfg([f"data={name}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, LightningDataModule)
    assert list(dm.input_shape) == list(cfg.data.input_shape)
    assert dm.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("name", _options("model"))
def test_every_model_config_instantiates_for_its_data(compose_cfg: ComposeFn, name: str) -> None:
    data = "mnist1d" if "1d" in name else "mnist"
    cfg = compose_cfg([f"model={name}", f"data={data}"])
    _, module, _ = build(cfg)
    assert isinstance(module, LightningModule)


@pytest.mark.parametrize(
    "group",
    [
        "trainer",
        "logger",
        "callbacks",
        "module",
        "module/optimizer",
        "module/scheduler",
        "debug",
        "paths",
        "hparams_search",
        "compression",
    ],
)
def test_every_option_of_every_group_composes_and_instantiates(compose_cfg: ComposeFn, group: str) -> None:
    for name in _options(group):
        cfg = compose_cfg([f"{group}={name}"])
        if group == "trainer":
            trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
            assert isinstance(trainer_cfg, dict) and trainer_cfg["_target_"].endswith("Trainer")
            # DDP is exercised in a subprocess, and a GPU trainer needs a GPU
            needs_gpu = trainer_cfg["accelerator"] == "gpu" and not torch.cuda.is_available()
            if trainer_cfg.get("strategy") != "ddp" and not needs_gpu:
                assert isinstance(instantiate(cfg.trainer), Trainer)
        elif group in ("logger", "callbacks", "compression"):
            node = cfg.get(group) or {}
            for key, sub in node.items():
                if sub is not None:
                    obj = instantiate(sub)
                    assert obj is not None, f"{group}={name}: {key}"
                    if group != "logger":
                        assert isinstance(obj, Callback)
        else:
            _, module, trainer = build(cfg)
            assert isinstance(module, LightningModule) and isinstance(trainer, Trainer)
            optimizers = module.configure_optimizers()
            assert optimizers is not None


def test_constant_learning_rate_by_removing_the_scheduler(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg(["~module/scheduler"])
    _, module, _ = build(cfg)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_slurm_launcher_composes(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], keep_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min == 240


def test_compression_group_is_a_list_of_callbacks_in_order(compose_cfg: ComposeFn, tmp_path: Path) -> None:
    """compression=[a,b] composes several techniques; run(cfg) adds them after the callbacks, in order."""
    extra = tmp_path / "extra_conf" / "compression"
    extra.mkdir(parents=True)
    for name in ("first", "second"):
        (extra / f"{name}.yaml").write_text(
            f"{name}:\n  _target_: lightning.pytorch.callbacks.LearningRateMonitor\n  logging_interval: step\n"
        )
    search_path = f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]"
    cfg = compose_cfg([search_path, "compression=[second,first]", "compression.first.logging_interval=epoch"])
    assert list(cfg.compression) == ["second", "first"]
    _, _, trainer = build(cfg)
    monitors = [c for c in trainer.callbacks if type(c).__name__ == "LearningRateMonitor"]  # type: ignore[attr-defined]
    assert [m.logging_interval for m in monitors] == ["epoch", "step", "epoch"]


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_runs_under_fast_dev_run(compose_cfg: ComposeFn, name: str) -> None:
    cfg = compose_cfg([f"experiment={name}", "trainer.fast_dev_run=true", "callbacks.progress_bar=null"])
    assert Path(CONF_DIR / "experiment" / f"{name}.yaml").read_text().count("python train.py") >= 1
    metrics = run(cfg)
    assert "test/acc" in metrics and 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["compress/params"] > 0 and metrics["compress/macs"] > 0


def test_optimized_metric_is_returned_and_a_missing_one_is_named() -> None:
    cfg = OmegaConf.create({"optimized_metric": "val/acc"})
    assert metric_for_sweeper(cfg, {"val/acc": 0.5}) == 0.5
    with pytest.raises(KeyError, match=r"optimized_metric 'val/acc' was not logged; logged metrics: \['a'\]"):
        metric_for_sweeper(cfg, {"a": 1.0})
    assert metric_for_sweeper(OmegaConf.create({"optimized_metric": None}), {}) is None


def test_unknown_group_option_lists_the_known_ones(compose_cfg: ComposeFn) -> None:
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'model/nope'.*lenet5"):
        compose_cfg(["model=nope"])
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'data/nope'.*mnist"):
        compose_cfg(["data=nope"])


def test_wrong_config_key_is_refused_with_a_hint(compose_cfg: ComposeFn) -> None:
    with pytest.raises(ConfigCompositionException, match=r"(?s)max_epoch.*\+trainer.max_epoch=1"):
        compose_cfg(["trainer.max_epoch=1"])


def test_compression_entry_without_target_is_refused(compose_cfg: ComposeFn) -> None:
    cfg: DictConfig = compose_cfg()
    with open_dict(cfg):
        cfg.compression = {"broken": {"x": 1}}
    with pytest.raises(ValueError, match=r"config `compression.broken` has no `_target_`"):
        build(cfg)
