"""Entry point: ``python train.py [overrides]`` (Hydra 1.3). See README.md and ``conf/train.yaml``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from effdl_lightning.run import metric_for_sweeper, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; return the optimized metric so that sweepers (Optuna) can use it."""
    return metric_for_sweeper(cfg, run(cfg))


if __name__ == "__main__":
    main()
