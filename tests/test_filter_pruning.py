"""FilterPruning: channels removed inside fit, optimizer/scheduler rebuilt, resume, load_compressed, DDP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from effdl_lightning import load_compressed
from effdl_lightning.callbacks import FilterPruning
from effdl_lightning.core.record import CHECKPOINT_KEY, get_record
from effdl_lightning.measure import profile
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

from .structured_helpers import cnn_module, cnn_trainer, image_data, small_cnn

ROOT = Path(__file__).resolve().parents[1]


class Spy(Callback):
    """Records, per epoch start, the parameters' shapes, the optimizer's params and the LR."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lr: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # the LR the epoch trains with (epoch schedulers step after its last batch)
            self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.is_last_batch:
            opt = trainer.optimizers[0]
            self.seen.append(
                {
                    "shapes": {n: tuple(p.shape) for n, p in pl_module.model.named_parameters()},
                    "optimizer_holds_model_params": {id(p) for g in opt.param_groups for p in g["params"]}
                    == {id(p) for p in pl_module.parameters()},
                    "weights": {n: p.detach().clone() for n, p in pl_module.model.named_parameters()},
                }
            )


def test_a_cut_mid_fit_rebuilds_optimizer_and_scheduler_and_training_continues() -> None:
    pruning = FilterPruning(ratio=0.5, start_epoch=1, exclude="9")
    spy = Spy()
    module = cnn_module()
    momentum_before: dict[str, torch.Tensor] = {}

    class GrabMomentum(Callback):  # the momentum of conv 0 just before the cut
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch == 0:
                opt = trainer.optimizers[0]
                momentum_before["0.weight"] = opt.state[pl_module.model[0].weight]["momentum_buffer"].clone()
                momentum_before["norm"] = pl_module.model[0].weight.detach().abs().sum((1, 2, 3))

    trainer = cnn_trainer([GrabMomentum(), pruning, spy], max_epochs=3)
    trainer.fit(module, train_dataloaders=image_data())
    before, after, last = spy.seen
    assert before["shapes"]["0.weight"] == (16, 1, 3, 3) and after["shapes"]["0.weight"] == (8, 1, 3, 3)
    assert after["shapes"]["4.weight"] == (12, 8, 3, 3) and after["shapes"]["9.weight"][1] == 12 * 9
    assert after["shapes"]["11.weight"] == (4, 32)  # the classifier's outputs are the model's
    assert after["optimizer_holds_model_params"] and last["optimizer_holds_model_params"]
    # the schedule continues where it was (StepLR gamma 0.7 per epoch), not from the initial LR
    assert spy.lr == pytest.approx([0.05, 0.05 * 0.7, 0.05 * 0.7**2])
    # training continues on the new parameters
    assert not torch.equal(after["weights"]["0.weight"], last["weights"]["0.weight"])
    # the 8 filters with the largest L1 norm survived, and their momentum was carried over
    kept = torch.argsort(momentum_before["norm"], descending=True)[:8].sort().values
    assert pruning.history[0]["macs_fraction"] < 0.5
    assert len(get_record(module.model)) == 1
    record = get_record(module.model)[0]["modules"]
    assert record["0"]["out"] == kept.tolist()
    assert trainer.logged_metrics["compress/macs"] == pruning.history[0]["macs"]


def test_momentum_of_surviving_filters_is_kept() -> None:
    before: dict[int, torch.Tensor] = {}
    after: dict[int, torch.Tensor] = {}

    class Momentum(Callback):
        def __init__(self, into: dict[int, torch.Tensor], hook: str) -> None:
            self.into = into
            setattr(self, hook, self.grab)

        def grab(self, trainer: Any, pl_module: Any) -> None:
            state = trainer.optimizers[0].state[pl_module.model[0].weight]
            if "momentum_buffer" in state:  # none before the first step
                self.into[trainer.current_epoch] = state["momentum_buffer"].clone()

    # Momentum(after) runs after FilterPruning in on_train_epoch_start: it sees the rebuilt optimizer
    trainer = cnn_trainer(
        [
            Momentum(before, "on_train_epoch_end"),
            FilterPruning(ratio=0.5, start_epoch=1, exclude="9"),
            Momentum(after, "on_train_epoch_start"),
        ],
        max_epochs=2,
    )
    module = cnn_module(scheduler=False)
    trainer.fit(module, train_dataloaders=image_data())
    kept = get_record(module.model)[0]["modules"]["0"]["out"]
    assert len(kept) == 8 and after[1].shape == (8, 1, 3, 3)
    torch.testing.assert_close(after[1], before[0][kept], rtol=0, atol=0)


def test_resume_after_a_cut_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> FilterPruning:
        return FilterPruning(ratio=0.5, start_epoch=1, exclude="9")

    straight = cnn_module()
    cnn_trainer([make()], max_epochs=4).fit(straight, train_dataloaders=image_data())

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = cnn_module()
    cnn_trainer([make(), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        first, train_dataloaders=image_data()
    )
    stored = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert stored[CHECKPOINT_KEY]["target"] == "model" and len(stored[CHECKPOINT_KEY]["entries"]) == 1

    resumed = cnn_module(seed=7)  # a freshly built, unpruned model with other weights
    callback = make()
    cnn_trainer([callback], max_epochs=4).fit(
        resumed, train_dataloaders=image_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert callback.events_done == 1 and len(get_record(resumed.model)) == 1  # no second cut
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_load_compressed_rebuilds_the_pruned_model_from_a_checkpoint(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = cnn_module()
    cnn_trainer([FilterPruning(ratio=0.5, exclude="9"), ckpt], max_epochs=1, enable_checkpointing=True).fit(
        module, train_dataloaders=image_data()
    )
    x = torch.randn(5, 1, 12, 12)
    module.eval()
    with torch.no_grad():
        expected = module(x)
    # a bare network, freshly built
    net = load_compressed(small_cnn(), tmp_path / "last.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    # the LightningModule, freshly built
    fresh = load_compressed(cnn_module(seed=3), str(tmp_path / "last.ckpt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    # without the record, the checkpoint does not load into the original class
    with pytest.raises(RuntimeError, match="size mismatch"):
        ClassificationModule.load_from_checkpoint(tmp_path / "last.ckpt", model=small_cnn())


def test_mac_target_in_steps_on_resnet20() -> None:
    model = create("resnet20", num_classes=4, input_shape=(1, 12, 12))
    module = cnn_module(model=model)
    pruning = FilterPruning(target_macs=0.5, start_epoch=0, end_epoch=1, events=2)
    cnn_trainer([pruning], max_epochs=2).fit(module, train_dataloaders=image_data(n=64))
    fractions = [h["macs_fraction"] for h in pruning.history]
    assert len(fractions) == 2
    assert 0.7 <= fractions[0] <= 0.75 and 0.45 <= fractions[1] <= 0.5
    assert profile(module.model, (1, 12, 12), latency=False).macs == pruning.history[-1]["macs"]


@pytest.mark.ddp
def test_ddp_two_processes_cut_the_same_channels_and_agree_with_one(tmp_path: Path) -> None:
    script = ROOT / "tests" / "scripts" / "filter_prune_ddp.py"
    for devices in (1, 2):
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(devices)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "rank0_of1.pt", weights_only=True)["weights"]
    r0 = torch.load(tmp_path / "rank0_of2.pt", weights_only=True)["weights"]
    r1 = torch.load(tmp_path / "rank1_of2.pt", weights_only=True)["weights"]
    assert one["0.weight"].shape[0] == 8
    for name in one:
        assert torch.equal(r0[name], r1[name]), name
        torch.testing.assert_close(r0[name], one[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"`ratio` must be in \[0, 1\), got 1.0"),
        ({"target_macs": 0.0}, r"`target_macs` must be in \(0, 1\], got 0.0"),
        ({"target_macs": 0.5, "target_params": 0.5}, r"at most one of them"),
        ({"criterion": "taylor"}, r"`criterion` must be one of \('l1', 'l2', 'random'\), got 'taylor'"),
        ({"start_epoch": 3, "end_epoch": 1}, r"`end_epoch` \(1\) is before `start_epoch` \(3\)"),
        ({"events": 0}, r"`events` must be >= 1, got 0"),
        ({"layer_ratios": {"conv*": 1.5}}, r"`layer_ratios\['conv\*'\]` must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        FilterPruning(**kwargs)


def test_a_pattern_that_matches_nothing_and_an_unreachable_target_fail_clearly() -> None:
    with pytest.raises(MisconfigurationException, match=r"exclude pattern 'head' matches no layer"):
        cnn_trainer([FilterPruning(exclude="head")], max_epochs=1).fit(
            cnn_module(), train_dataloaders=image_data()
        )
    shuffle = create("shufflenet_v1", num_classes=4, input_shape=(1, 12, 12))  # grouped convs: little to cut
    with pytest.raises(MisconfigurationException, match=r"cannot reach target_macs=0.1.*grouped conv"):
        cnn_trainer([FilterPruning(target_macs=0.1)], max_epochs=1).fit(
            cnn_module(model=shuffle), train_dataloaders=image_data(n=32)
        )


def test_channel_pruning_in_fit_refits_the_next_layer_and_loads_back(tmp_path: Path) -> None:
    from effdl_lightning.callbacks import ChannelPruning

    pruning = ChannelPruning(ratio=0.5, start_epoch=1, calibration_batches=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    spy = Spy()
    module = cnn_module()
    cnn_trainer([pruning, spy, ckpt], max_epochs=3, enable_checkpointing=True).fit(
        module, train_dataloaders=image_data()
    )
    before, after, last = spy.seen
    assert before["shapes"]["4.weight"] == (24, 16, 3, 3)
    assert after["shapes"]["4.weight"] == (12, 8, 3, 3) and after["shapes"]["9.weight"][1] == 12 * 9
    assert after["optimizer_holds_model_params"]
    assert not torch.equal(after["weights"]["4.weight"], last["weights"]["4.weight"])  # training goes on
    assert [layer["consumer"] for layer in pruning.layers][:2] == ["4", "9"]
    assert all(layer["error_after"] <= layer["error_selected"] + 1e-6 for layer in pruning.layers)
    x = torch.randn(3, 1, 12, 12)
    module.eval()
    net = load_compressed(small_cnn(), tmp_path / "last.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name",
    ["lenet5", "vgg_small", "resnet20", "resnet56", "mobilenet_v2", "shufflenet_v2", "efficientnet"],
)
def test_filter_pruning_in_fit_on_every_architecture(name: str, tmp_path: Path) -> None:
    shape = (1, 16, 16)

    def build(seed: int) -> ClassificationModule:
        torch.manual_seed(seed)
        return ClassificationModule(
            create(name, num_classes=4, input_shape=shape), num_classes=4, input_shape=shape
        )

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, *shape), torch.randint(0, 4, (16,))), batch_size=8
    )
    module = build(0)
    macs = profile(module.model, shape, latency=False).macs
    pruning = FilterPruning(ratio=0.4)  # (a MAC target is bisection over many cuts: tested on ResNet-20)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cnn_trainer([pruning, ckpt], max_epochs=1, enable_checkpointing=True).fit(module, train_dataloaders=data)
    assert profile(module.model, shape, latency=False).macs <= 0.8 * macs
    fresh = load_compressed(build(1), tmp_path / "last.ckpt").eval()
    module.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), module(x), rtol=0, atol=0)


def test_filter_pruning_then_magnitude_pruning_in_one_fit() -> None:
    from effdl_lightning.callbacks import MagnitudePruning

    structured = FilterPruning(ratio=0.5, start_epoch=1, exclude="9")
    masks = MagnitudePruning(target_sparsity=0.5, schedule="one_shot", start=0, make_permanent=False)
    module = cnn_module()
    cnn_trainer([structured, masks], max_epochs=3).fit(module, train_dataloaders=image_data())
    params = dict(module.model.named_parameters())
    assert params["0.weight"].shape == (8, 1, 3, 3)
    for name, mask in masks.masks.items():
        assert mask.shape == params[name].shape, name
        assert torch.all(params[name][~mask] == 0), name  # zeros stay zero on the new parameters
        # the removed filters (smallest L1) were the sparsest: the survivors keep at most the 50% sparsity
        assert 0.2 < 1 - mask.float().mean() <= 0.55, name
