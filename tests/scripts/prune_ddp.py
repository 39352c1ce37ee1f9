"""Run MagnitudePruning on the tiny task with N CPU processes; rank 0 saves masks + weights of every rank.

python tests/scripts/prune_ddp.py OUT_DIR DEVICES
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, seed_everything
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from effdl_lightning.callbacks import MagnitudePruning
from tests.pruning_helpers import tiny_data, tiny_module, tiny_trainer


class _Interleaved(LightningDataModule):
    """Rank r of w gets samples r, r+w, … in order, so w processes see exactly the 1-process batches."""

    def __init__(self, devices: int) -> None:
        super().__init__()
        self.devices = devices

    def train_dataloader(self) -> DataLoader:
        full = tiny_data(batch_size=32).dataset
        rank, world = self.trainer.global_rank, self.trainer.world_size  # type: ignore[union-attr]
        return DataLoader(Subset(full, range(rank, len(full), world)), batch_size=32 // world)


def main(out: Path, devices: int) -> None:
    seed_everything(0)
    pruning = MagnitudePruning(target_sparsity=0.8, scope="global", frequency=4, make_permanent=False)
    module = tiny_module()
    # the same global batch of 32: 32 per step in one process, 16 per process with two
    strategy = "ddp" if devices > 1 else "auto"
    trainer = tiny_trainer(
        [pruning], max_epochs=3, devices=devices, strategy=strategy, use_distributed_sampler=False
    )
    trainer.fit(module, datamodule=_Interleaved(devices))
    rank = trainer.global_rank
    torch.save(
        {"masks": pruning.state_dict()["masks"], "weights": module.model.state_dict()},
        out / f"rank{rank}_of{devices}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
