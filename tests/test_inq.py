"""Incremental Network Quantization (arXiv 1702.03044): levels, eq. 4, partition, the callback, resume, errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from effdl_lightning.callbacks import IncrementalQuantization, MagnitudePruning
from effdl_lightning.core.quant.inq import (
    PowerOfTwoQuantizer,
    partition_masks,
    power_of_two_levels,
    power_of_two_n1,
    power_of_two_quantize,
)

from .pruning_helpers import tiny_data, tiny_module, tiny_trainer


# --- levels and eq. 4 ---------------------------------------------------------------------------------
def test_levels_and_quantization_by_hand() -> None:
    w = torch.tensor([0.9, -0.6, 0.75, 0.7, 0.3, 0.01, -0.004, 0.00390625, 0.0039, 0.0])
    # max|W| = 0.9, b = 5: n1 = floor(log2(4 * 0.9 / 3)) = floor(log2(1.2)) = 0,
    # n2 = n1 + 1 - 2^(5-1)/2 = 0 + 1 - 8 = -7: levels {±1, ±1/2, ..., ±1/128, 0}, 17 values
    n1, n2, levels = power_of_two_levels(w, bits=5)
    assert (n1, n2) == (0, -7)
    powers = [2.0**n for n in range(-7, 1)]
    assert levels.tolist() == [-p for p in reversed(powers)] + [0.0] + powers
    # eq. 4 with adjacent levels a < b: w -> b*sgn(w) if (a + b)/2 <= |w| < 3b/2, so
    #   0.9 in [3/4, 3/2) -> 1;  0.6 in [3/8, 3/4) -> 1/2;  0.75 = 3/4 (the tie goes up) -> 1;  0.7 -> 1/2;
    #   0.3 in [3/16, 3/8) -> 1/4;  0.01 in [3/512, 3/256) -> 1/128 (the smallest power, [2^-8, 3*2^-8));
    #   0.004 >= (0 + 2^-7)/2 = 2^-8 = 0.00390625 -> 1/128; 2^-8 itself -> 1/128; 0.0039 < 2^-8 -> 0
    expected = [1.0, -0.5, 1.0, 0.5, 0.25, 2**-7, -(2**-7), 2**-7, 0.0, 0.0]
    assert power_of_two_quantize(w, bits=5).tolist() == expected
    # b = 2 is ternary: n2 = n1 + 1 - 1 = n1 -> {-1, 0, 1}, zero below 2^(n2-1) = 1/2
    n1, n2, levels = power_of_two_levels(w, bits=2)
    assert (n1, n2) == (0, 0) and levels.tolist() == [-1.0, 0.0, 1.0]
    assert power_of_two_quantize(w, bits=2).tolist() == [1.0, -1.0, 1.0, 1.0] + [0.0] * 6


def test_n1_is_exact_at_powers_of_two() -> None:
    # 2^n1 <= 4s/3 <=> 3 * 2^(n1-2) <= s: s = 0.75 gives exactly n1 = 0, a hair below gives -1
    assert power_of_two_n1(0.75) == 0
    assert power_of_two_n1(float(torch.tensor(0.75).nextafter(torch.tensor(0.0)))) == -1
    assert power_of_two_n1(1.5) == 1 and power_of_two_n1(3.0) == 2 and power_of_two_n1(0.0) == 0
    # max|W| < 3 * 2^n1 / 2 always: the largest weight never saturates
    for s in torch.rand(200, generator=torch.Generator().manual_seed(0)).mul(10).tolist():
        n1 = power_of_two_n1(s)
        assert 2.0**n1 <= 4 * s / 3 < 2.0 ** (n1 + 1)


def test_quantizer_is_straight_through_and_codes_round_trip() -> None:
    q = PowerOfTwoQuantizer(bits=4)  # 2^(4-2) = 4 powers per sign: codes -4..4
    assert q.code_range == (-4, 4) and q.config() == {"type": "PowerOfTwoQuantizer", "bits": 4}
    x = (torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_()
    y = q(x)
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(y.detach(), power_of_two_quantize(x.detach(), bits=4))
    codes = q.codes(x)
    assert codes.dtype == torch.int64 and int(codes.min()) >= -4 and int(codes.max()) <= 4
    assert torch.equal(q.decode(codes), q(x).detach())
    # n1 is fixed at the first call: larger inputs saturate at 2^n1 instead of moving the levels
    n1 = int(q.n1)
    assert torch.equal(q(torch.tensor([100.0, -100.0])), torch.tensor([2.0**n1, -(2.0**n1)]))
    restored = PowerOfTwoQuantizer(bits=4)
    restored.load_state_dict(q.state_dict())
    assert torch.equal(restored(x).detach(), y.detach())
    q.freeze(torch.tensor([3.0]))  # 4 * 3 / 3 = 4: n1 = 2
    assert int(q.n1) == 2
    q.unfreeze()  # the next call derives n1 again: max|x| = 0.9 -> n1 = 0
    assert q(torch.tensor([0.9])).item() == 1.0 and int(q.n1) == 0
    q.enabled = False
    assert torch.equal(q(x), x)
    for bits in (1, 9):
        with pytest.raises(ValueError, match=rf"bits must be an int in \[2, 8\], got {bits}"):
            PowerOfTwoQuantizer(bits=bits)


# --- partition ----------------------------------------------------------------------------------------
def test_partition_grows_monotonically_largest_first() -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(7, generator=g)}
    masks: dict[str, torch.Tensor] | None = None
    for fraction in (0.25, 0.5, 0.875, 1.0):
        grown = partition_masks(weights, fraction, already=masks)
        for name, w in weights.items():
            m = grown[name]
            assert int(m.sum()) == round(fraction * w.numel())
            if masks is not None:
                assert torch.all(m[masks[name]])  # never un-quantizes
            if fraction < 1.0:  # every quantized |w| is at least every free |w|
                assert w.abs()[m].min() >= w.abs()[~m].max()
        masks = grown
    assert masks is not None and all(bool(m.all()) for m in masks.values())


def test_partition_keeps_what_was_quantized_and_random_is_seeded() -> None:
    w = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    already = {"w": torch.tensor([False, False, False, True, True])}  # the two smallest, e.g. pruned
    # 0.6 * 5 = 3 quantized: the two already and the largest of the rest
    assert partition_masks(w, 0.6, already=already)["w"].tolist() == [True, False, False, True, True]
    assert int(partition_masks(w, 0.2, already=already)["w"].sum()) == 2  # never fewer than before
    big = {"w": torch.randn(1000)}
    r1 = partition_masks(big, 0.5, "random", generator=torch.Generator().manual_seed(3))["w"]
    r2 = partition_masks(big, 0.5, "random", generator=torch.Generator().manual_seed(3))["w"]
    assert torch.equal(r1, r2) and int(r1.sum()) == 500
    assert not torch.equal(r1, partition_masks(big, 0.5)["w"])  # not the magnitude partition
    with pytest.raises(ValueError, match=r"strategy must be one of \('magnitude', 'random'\), got 'hessian'"):
        partition_masks(w, 0.5, "hessian")


# --- the callback in fit --------------------------------------------------------------------------------
class FixedWeightsWatch(Callback):
    """Remembers each weight's value when it is first quantized and checks it after every batch."""

    def __init__(self, inq: IncrementalQuantization) -> None:
        self.inq = inq
        self.first: dict[str, torch.Tensor] = {}
        self.seen: dict[str, torch.Tensor] = {}
        self.steps_per_epoch: list[int] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        for name, mask in self.inq.masks.items():
            w = self.inq._params[name].detach()
            if name not in self.first:
                self.first[name] = w.clone()
                self.seen[name] = mask.clone()
            new = mask & ~self.seen[name]
            self.first[name][new] = w[new]
            self.seen[name] = mask.clone()
            assert torch.equal(w[mask], self.first[name][mask]), name

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps_per_epoch.append(self.inq.step)


def _assert_all_in_levels(inq: IncrementalQuantization) -> None:
    for name, param in inq._params.items():
        w = param.detach()
        _, _, levels = power_of_two_levels(torch.tensor([0.75 * 2.0 ** inq.n1[name]]), inq.bits)
        assert torch.isin(w, levels).all(), name
        assert torch.equal(power_of_two_quantize(w, inq.bits, inq.n1[name]), w), name


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_quantized_weights_never_move_and_all_end_in_the_level_set(strategy: str) -> None:
    inq = IncrementalQuantization(bits=4, strategy=strategy, epochs_per_step=1, exclude="4")
    watch = FixedWeightsWatch(inq)
    module = tiny_module()  # SGD, Nesterov momentum and weight decay: fixed weights must be re-written
    with torch.no_grad():  # a "pruned" layer: every third weight exactly zero before INQ
        module.model[0].weight.view(-1)[::3] = 0.0
    pruned = module.model[0].weight.detach() == 0
    last = module.model[4].weight.detach().clone()
    trainer = tiny_trainer([inq, watch], max_epochs=5, limit_train_batches=3)
    trainer.fit(module, train_dataloaders=tiny_data())
    assert watch.steps_per_epoch == [1, 2, 3, 4, 4]  # steps at epochs 0..3, epoch 4 trains the biases
    assert set(inq.masks) == {"0.weight", "2.weight"}
    _assert_all_in_levels(inq)
    assert torch.all(module.model[0].weight[pruned] == 0)  # pruned zeros stay zero
    assert not torch.equal(module.model[4].weight.detach(), last)  # the excluded layer trained
    metrics = trainer.callback_metrics
    assert float(metrics["compress/inq_portion"]) == 1.0
    assert float(metrics["compress/inq_quantized_fraction"]) == 1.0


def test_portions_count_the_surviving_weights_and_the_levels_are_fixed_at_the_first_step() -> None:
    inq = IncrementalQuantization(bits=5, portions=(0.5, 1.0))
    module = tiny_module()
    with torch.no_grad():
        module.model[2].weight.view(-1)[:1024] = 0.0  # half of the 32x64 layer pruned
    expected_n1 = {
        n: power_of_two_n1(float(p.detach().abs().max())) for n, p in module.model.named_parameters()
    }
    inq._select(module.model)
    no_optimizers: Any = SimpleNamespace(optimizers=[])
    inq.quantize_step(no_optimizers)
    # the 1,024 zeros are fixed at 0; half of the 1,024 others are quantized: 1,536 of 2,048
    assert int(inq.masks["2.weight"].sum()) == 1536 and bool(inq.masks["2.weight"].view(-1)[:1024].all())
    assert int(inq.masks["0.weight"].sum()) == 640  # half of 20x64
    assert inq.quantized_fraction() == pytest.approx((640 + 1536 + 64) / (1280 + 2048 + 128))
    with torch.no_grad():  # the free weights grow: n1 stays the one of the first step
        for name, p in inq._params.items():
            p.mul_(torch.where(inq.masks[name], 1.0, 9.0))
    inq.quantize_step(no_optimizers)
    assert inq.n1 == {n: expected_n1[n] for n in inq._params}
    _assert_all_in_levels(inq)
    assert torch.all(module.model[2].weight.view(-1)[:1024] == 0)


def test_default_schedule_spreads_the_steps_to_the_last_epoch() -> None:
    inq = IncrementalQuantization(start_epoch=2)
    # max_epochs 12, 4 steps from epoch 2: every (12 - 1 - 2) // 3 = 3 epochs -> 2, 5, 8, 11 (the last epoch)
    assert inq._schedule(SimpleNamespace(max_epochs=12)) == [2, 5, 8, 11]  # type: ignore[arg-type]
    assert inq._schedule(SimpleNamespace(max_epochs=4)) == [2, 3, 4, 5]  # type: ignore[arg-type]
    assert IncrementalQuantization(portions=[1.0])._schedule(SimpleNamespace(max_epochs=9)) == [0]  # type: ignore[arg-type]
    with pytest.raises(
        MisconfigurationException, match=r"max_epochs=-1: set max_epochs or pass `epochs_per_step=`"
    ):
        inq._schedule(SimpleNamespace(max_epochs=-1))  # type: ignore[arg-type]


def test_steps_beyond_the_fit_are_applied_at_its_end_with_a_warning() -> None:
    inq = IncrementalQuantization(bits=3, epochs_per_step=2)  # steps at 0, 2, 4, 6 of a 3-epoch fit
    module = tiny_module()
    with pytest.warns(
        UserWarning, match=r"the step at epoch 6 \(portion 1.0\) is beyond the last epoch \(2\)"
    ):
        tiny_trainer([inq], max_epochs=3, limit_train_batches=2).fit(module, train_dataloaders=tiny_data())
    assert inq.step == 4
    _assert_all_in_levels(inq)


def test_composes_with_magnitude_pruning_listed_before() -> None:
    pruning = MagnitudePruning(target_sparsity=0.6, schedule="one_shot", start=0, make_permanent=False)
    inq = IncrementalQuantization(bits=5, portions=(0.5, 1.0), start_epoch=1, epochs_per_step=1)
    module = tiny_module()
    tiny_trainer([pruning, inq], max_epochs=3, limit_train_batches=3).fit(
        module, train_dataloaders=tiny_data()
    )
    weights = dict(module.model.named_parameters())
    for name, mask in pruning.masks.items():
        assert torch.all(weights[name][~mask] == 0), name
        assert torch.equal(inq.pruned[name], ~mask), name  # INQ took the pruned zeros as fixed at 0
    _assert_all_in_levels(inq)


def test_resume_mid_inq_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> IncrementalQuantization:
        return IncrementalQuantization(bits=4, strategy="random", epochs_per_step=1, seed=7)

    straight = make()
    module_a = tiny_module()
    tiny_trainer([straight], max_epochs=5, limit_train_batches=3).fit(module_a, train_dataloaders=tiny_data())

    first = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.warns(UserWarning, match=r"the step at epoch 3 \(portion 1.0\) is beyond the last epoch"):
        tiny_trainer([first, ckpt], max_epochs=2, limit_train_batches=3, enable_checkpointing=True).fit(
            tiny_module(), train_dataloaders=tiny_data()
        )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert saved["IncrementalQuantization"]["step"] == 2  # saved after steps 0 and 1 of 4
    resumed = make()
    module_c = tiny_module(seed=123)  # different initial weights: everything must come from the checkpoint
    tiny_trainer([resumed], max_epochs=5, limit_train_batches=3).fit(
        module_c, train_dataloaders=tiny_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed.step == straight.step == 4 and resumed.n1 == straight.n1
    for name in straight.masks:
        assert torch.equal(resumed.masks[name], straight.masks[name]), name
        assert torch.equal(resumed.values[name], straight.values[name]), name
    a, c = module_a.state_dict(), module_c.state_dict()
    assert a.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], c[name]), name


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1}, r"`bits` must be an int in \[2, 8\], got 1"),
        ({"bits": 9}, r"`bits` must be an int in \[2, 8\], got 9"),
        ({"bits": True}, r"`bits` must be an int in \[2, 8\], got True"),
        ({"portions": []}, r"`portions` must be strictly increasing in \(0, 1\] and end at 1.0 .*got \[\]"),
        ({"portions": [0.5, 0.4, 1.0]}, r"`portions` must be strictly increasing .*got \[0.5, 0.4, 1.0\]"),
        ({"portions": [0.5, 0.5, 1.0]}, r"`portions` must be strictly increasing .*got \[0.5, 0.5, 1.0\]"),
        ({"portions": [0.0, 1.0]}, r"`portions` must be strictly increasing in \(0, 1\] .*got \[0.0, 1.0\]"),
        ({"portions": [0.5, 1.5]}, r"`portions` must be strictly increasing in \(0, 1\] .*got \[0.5, 1.5\]"),
        ({"portions": [0.5, 0.9]}, r"`portions` must .* end at 1.0 .*got \[0.5, 0.9\]"),
        ({"portions": ["half", 1.0]}, r"`portions` must be strictly increasing .*got \['half', 1.0\]"),
        ({"strategy": "hessian"}, r"`strategy` must be one of \('magnitude', 'random'\), got 'hessian'"),
        ({"epochs_per_step": 0}, r"`epochs_per_step` must be an int >= 1 or None, got 0"),
        ({"start_epoch": -1}, r"`start_epoch` must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        IncrementalQuantization(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"include": "classifier*"},
            r"IncrementalQuantization: include pattern 'classifier\*' matches no layer",
        ),
        ({"exclude": "fc9"}, r"IncrementalQuantization: exclude pattern 'fc9' matches no layer"),
    ],
)
def test_patterns_that_match_nothing_fail_at_setup(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        tiny_trainer([IncrementalQuantization(**kwargs)], max_epochs=1).fit(
            tiny_module(), train_dataloaders=tiny_data()
        )


def test_a_restored_state_for_another_model_is_refused() -> None:
    inq = IncrementalQuantization()
    inq.load_state_dict({"step": 1, "masks": {"0.weight": torch.ones(3, 3, dtype=torch.bool)}})
    with pytest.raises(
        MisconfigurationException, match=r"restored state quantizes '0.weight' of shape \(3, 3\)"
    ):
        tiny_trainer([inq], max_epochs=1).fit(tiny_module(), train_dataloaders=tiny_data())
