"""Run LowRankFactorization (nuclear norm in epoch 0, Jaderberg + SVD at epoch 1) with N CPU processes; save results.

python tests/scripts/low_rank_ddp.py OUT_DIR DEVICES
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, seed_everything
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from effdl_lightning.callbacks import LowRankFactorization
from tests.structured_helpers import cnn_module, cnn_trainer, image_data, small_cnn


class _Interleaved(LightningDataModule):
    """Rank r of w gets samples r, r+w, … in order, so w processes see exactly the 1-process batches."""

    def train_dataloader(self) -> DataLoader:
        full = image_data(batch_size=32).dataset
        rank, world = self.trainer.global_rank, self.trainer.world_size  # type: ignore[union-attr]
        return DataLoader(Subset(full, range(rank, len(full), world)), batch_size=32 // world)


def main(out: Path, devices: int) -> None:
    seed_everything(0)
    lowrank = LowRankFactorization(
        method={"conv": "jaderberg", "linear": "svd"}, rank_ratio=0.5, start_epoch=1, nuclear_norm=0.01
    )
    # no batch norm: on CPU, DDP cannot synchronize it, and 2 x 16 samples would not normalize like 32
    module = cnn_module(model=small_cnn(norm=False))
    strategy = "ddp" if devices > 1 else "auto"
    trainer = cnn_trainer(
        [lowrank], max_epochs=3, devices=devices, strategy=strategy, use_distributed_sampler=False
    )
    trainer.fit(module, datamodule=_Interleaved())
    module.eval()
    with torch.no_grad():
        outputs = module(torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(1)))
    torch.save(
        {"weights": module.model.state_dict(), "outputs": outputs},
        out / f"rank{trainer.global_rank}_of{devices}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
