"""DeepCompressionExport: prune -> share -> file in one fit; a diverged model is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from effdl_lightning.callbacks import DeepCompressionExport, MagnitudePruning, WeightSharing
from effdl_lightning.export import load_deep_compressed

from .pruning_helpers import tiny_data, tiny_module, tiny_trainer


def test_prune_share_export_in_one_fit(tmp_path: Path) -> None:
    path = tmp_path / "model.deepc"
    export = DeepCompressionExport(path=path, index_bits="auto", print_table=False)
    callbacks: list[Callback] = [
        MagnitudePruning(
            target_sparsity=0.8, unit="epoch", start=0, end=2, frequency=1, make_permanent=False
        ),
        WeightSharing(bits=3, start_epoch=3),
        export,
    ]
    module = tiny_module()
    trainer = tiny_trainer(callbacks, max_epochs=5)
    trainer.fit(module, train_dataloaders=tiny_data())
    assert export.report is not None and export.written == path
    assert path.stat().st_size == export.report.file_bytes
    loaded = load_deep_compressed(path)
    for name, tensor in module.model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    weight = loaded["0.weight"]
    assert (weight == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert len(torch.unique(weight[weight != 0])) <= 2**3
    assert float(trainer.callback_metrics["compress/storage_ratio"]) > 3.0


def test_a_diverged_model_is_not_written(tmp_path: Path) -> None:
    class _Diverge(Callback):
        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            pl_module.model[0].weight.data[0, 0] = float("nan")

    path = tmp_path / "model.deepc"
    trainer = tiny_trainer([_Diverge(), DeepCompressionExport(path=path, print_table=False)], max_epochs=1)
    with pytest.raises(
        RuntimeError, match=r"training diverged, \['0.weight'\] hold NaN or inf; nothing written"
    ):
        trainer.fit(tiny_module(), train_dataloaders=tiny_data())
    assert not path.exists()


def test_bad_index_bits() -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"`index_bits` must be in \[1, 16\], got 0"):
        DeepCompressionExport(index_bits=0)
    with pytest.raises(MisconfigurationException, match="got 'best'"):
        DeepCompressionExport(index_bits="best")
