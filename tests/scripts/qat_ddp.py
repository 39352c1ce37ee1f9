"""Run int8 QuantizationAwareTraining (from epoch 1) on the tiny image task with N CPU processes; save weights.

python tests/scripts/qat_ddp.py OUT_DIR DEVICES
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, seed_everything
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from effdl_lightning.callbacks import QuantizationAwareTraining
from tests.structured_helpers import cnn_module, cnn_trainer, image_data, small_cnn


class _Interleaved(LightningDataModule):
    """Rank r of w gets samples r, r+w, … in order, so w processes see exactly the 1-process batches."""

    def train_dataloader(self) -> DataLoader:
        full = image_data(batch_size=32).dataset
        rank, world = self.trainer.global_rank, self.trainer.world_size  # type: ignore[union-attr]
        return DataLoader(Subset(full, range(rank, len(full), world)), batch_size=32 // world)


def main(out: Path, devices: int) -> None:
    seed_everything(0)
    qat = QuantizationAwareTraining(start_epoch=1)
    # no batch norm: on CPU, DDP cannot synchronize it, and 2 x 16 samples would not normalize like 32
    module = cnn_module(model=small_cnn(norm=False))
    strategy = "ddp" if devices > 1 else "auto"
    trainer = cnn_trainer(
        [qat], max_epochs=3, devices=devices, strategy=strategy, use_distributed_sampler=False
    )
    trainer.fit(module, datamodule=_Interleaved())
    torch.save({"weights": module.model.state_dict()}, out / f"rank{trainer.global_rank}_of{devices}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
