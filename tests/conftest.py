"""Shared fixtures: Hydra composition of conf/train.yaml with the run folder under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from effdl_lightning.run import compose

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# the suite's nets are tiny: one intra-op thread avoids thread start-up and contention on 2 cores
torch.set_num_threads(1)


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[ComposeFn]:
    """Return ``compose(overrides, keep_hydra=False)`` with the run, data and logs under ``tmp_path``."""

    def _compose(overrides: list[str] | None = None, keep_hydra: bool = False) -> DictConfig:
        return compose(
            overrides or [], output_dir=tmp_path / "out", config_dir=CONF_DIR, keep_hydra=keep_hydra
        )

    yield _compose
    GlobalHydra.instance().clear()
