"""Shared fixtures: Hydra composition of conf/train.yaml with the run folder under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[ComposeFn]:
    """Return ``compose(overrides, config_name="train")`` with every path under ``tmp_path``.

    ``hydra:`` interpolations resolve as in a real run; ``keep_hydra=True`` keeps the ``hydra`` node.
    """

    def _compose(
        overrides: list[str] | None = None, config_name: str = "train", keep_hydra: bool = False
    ) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(ROOT)
            cfg.paths.output_dir = str(tmp_path / "out")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.data_dir = str(tmp_path / "data")
            if not keep_hydra:  # as in a real run, where @hydra.main passes the job config only
                del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
