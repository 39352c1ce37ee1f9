"""MagnitudePruning and core.pruning: schedule, masks, zeros that stay zero, resume, DDP, errors."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from effdl_lightning.callbacks import MagnitudePruning
from effdl_lightning.core.pruning import PruningSchedule, magnitude_masks, threshold_masks

from .pruning_helpers import tiny_data, tiny_module, tiny_trainer

ROOT = Path(__file__).resolve().parents[1]


# --- schedule -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_schedule_ends_and_monotonicity(kind: str) -> None:
    s = PruningSchedule(kind, start=10, end=110, frequency=10, initial_sparsity=0.1, final_sparsity=0.9)
    assert s.events() == list(range(10, 111, 10))
    assert s.sparsity(0) == pytest.approx(0.1) and s.sparsity(10) == pytest.approx(0.1)
    assert s.sparsity(110) == pytest.approx(0.9) and s.sparsity(10_000) == pytest.approx(0.9)
    values = [s.sparsity(t) for t in range(0, 130)]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_cubic_is_zhu_and_gupta() -> None:
    s = PruningSchedule("cubic", start=0, end=100, frequency=10, initial_sparsity=0.0, final_sparsity=0.8)
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at t = 50: 0.8 - 0.8 * 0.125
    assert s.sparsity(50) == pytest.approx(0.7)
    # the cubic front-loads pruning: halfway through, 7/8 of it is done
    assert s.fraction(50) == pytest.approx(0.875)


def test_one_shot_iterative_and_an_uneven_last_event() -> None:
    assert PruningSchedule("one_shot", 5, 5, 1, 0.0, 0.5).events() == [5]
    s = PruningSchedule("linear", 0, 25, 10, 0.0, 0.5)
    assert s.events() == [0, 10, 20, 25] and s.is_event(25) and not s.is_event(26)
    it = PruningSchedule("iterative", 0, 30, 10, 0.0, 0.0)
    assert [it.fraction(t) for t in it.events()] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "exp"}, r"schedule must be one of .*'cubic'.*got 'exp'"),
        ({"end": 5}, r"the pruning end \(5\) is before its start \(10\)"),
        ({"frequency": 0}, r"frequency must be >= 1 step, got 0"),
        ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\), got 1.0"),
        ({"initial_sparsity": 0.6}, r"initial_sparsity \(0.6\) exceeds final_sparsity \(0.5\)"),
    ],
)
def test_schedule_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"kind": "cubic", "start": 10, "end": 20, "frequency": 2, "final_sparsity": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PruningSchedule(**args)


# --- masks --------------------------------------------------------------------------------------------
def test_layer_and_global_masks_keep_the_largest() -> None:
    a = torch.tensor([0.1, -0.5, 0.3, 2.0])
    b = torch.tensor([1.0, 1.5, -3.0, 0.2])
    layer = magnitude_masks({"a": a, "b": b}, 0.5, "layer")
    assert layer["a"].tolist() == [False, True, False, True]
    assert layer["b"].tolist() == [False, True, True, False]
    glob = magnitude_masks({"a": a, "b": b}, 0.5, "global")
    assert glob["a"].tolist() == [False, False, False, True]
    assert glob["b"].tolist() == [True, True, True, False]


def test_masks_only_shrink_and_random_is_seeded() -> None:
    w = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    current = {"w": torch.tensor([False, True, True, True, True])}  # the largest was pruned before
    mask = magnitude_masks({"w": w}, 0.4, "layer", current=current)["w"]
    assert mask.tolist() == [False, True, True, False, False] or mask.tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert int(mask.sum()) == 3 and not mask[0]
    r1 = magnitude_masks(
        {"w": torch.randn(100)}, 0.5, criterion="random", generator=torch.Generator().manual_seed(1)
    )
    r2 = magnitude_masks(
        {"w": torch.randn(100)}, 0.5, criterion="random", generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(r1["w"], r2["w"]) and int(r1["w"].sum()) == 50


def test_han_threshold_masks() -> None:
    w = torch.tensor([0.1, -0.2, 1.0, -2.0])
    mask = threshold_masks({"w": w}, q={"w": 0.5}, std={"w": 1.0})["w"]
    assert mask.tolist() == [False, False, True, True]


# --- the callback in fit --------------------------------------------------------------------------------
def _zeros_stay_zero(optimizer: str) -> None:
    pruning = MagnitudePruning(target_sparsity=0.75, frequency=8, exclude="2", make_permanent=False)
    module = tiny_module(optimizer=optimizer)
    tiny_trainer([pruning], max_epochs=6).fit(module, train_dataloaders=tiny_data())
    # 8 steps per epoch, 48 in all; pruning ends at 75% = step 36, then 12 steps of fine-tuning
    assert pruning.schedule is not None and pruning.schedule.end == 36
    layers = dict(module.model.named_parameters())
    assert set(pruning.masks) == {"0.weight", "4.weight"}
    for name, mask in pruning.masks.items():
        assert 1 - mask.float().mean().item() == pytest.approx(0.75, abs=1 / mask.numel())
        assert torch.all(layers[name][~mask] == 0), name  # exactly zero after many steps
    assert torch.count_nonzero(layers["2.weight"]) == layers["2.weight"].numel()  # excluded layer stays dense


def test_zeros_stay_zero_with_sgd_momentum_and_weight_decay() -> None:
    _zeros_stay_zero("sgd")


def test_zeros_stay_zero_with_adamw() -> None:
    _zeros_stay_zero("adamw")


def test_zeros_stay_zero_with_an_optimizer_that_moves_zero_weights() -> None:
    _zeros_stay_zero("noisy")  # outside the zero-preserving set: the weights are re-masked every step


def test_a_weight_moved_behind_the_callbacks_back_is_caught_at_epoch_end() -> None:
    class Nudge(Callback):  # moves every weight after each step, which masking the gradient cannot stop
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            with torch.no_grad():
                pl_module.model[0].weight.add_(1e-3)

    pruning = MagnitudePruning(target_sparsity=0.5, schedule="one_shot", start=0, make_permanent=False)
    module = tiny_module()
    with pytest.warns(UserWarning, match=r"pruned weights of \['0.weight'\] moved away from zero"):
        tiny_trainer([pruning, Nudge()], max_epochs=3).fit(module, train_dataloaders=tiny_data())
    assert pruning._remask_weights
    # the fit ends with the masks applied once more, whatever moved the weights
    assert torch.all(module.model[0].weight[~pruning.masks["0.weight"]] == 0)


def test_optimizer_state_is_masked_and_metrics_are_logged() -> None:
    pruning = MagnitudePruning(target_sparsity=0.5, schedule="one_shot", start=3, make_permanent=False)
    module = tiny_module()
    trainer = tiny_trainer([pruning], max_epochs=2)
    trainer.fit(module, train_dataloaders=tiny_data())
    optimizer = trainer.optimizers[0]
    for name, p in module.model.named_parameters():
        if name in pruning.masks:
            buf = optimizer.state[p]["momentum_buffer"]
            assert torch.all(buf[~pruning.masks[name]] == 0)
    metrics = trainer.callback_metrics
    assert float(metrics["compress/sparsity"]) == pytest.approx(0.5, abs=0.01)
    assert "compress/sparsity/0.weight" in metrics and "compress/params_nonzero" in metrics


def test_global_scope_with_a_per_layer_override_and_permanent_end() -> None:
    pruning = MagnitudePruning(
        target_sparsity=0.9, scope="global", layer_targets={"4.*": 0.5}, schedule="one_shot", start=2
    )
    module = tiny_module()
    tiny_trainer([pruning], max_epochs=1).fit(module, train_dataloaders=tiny_data())
    w = dict(module.model.named_parameters())
    assert (w["4.weight"] == 0).float().mean().item() == pytest.approx(0.5)
    pooled = torch.cat([w["0.weight"].flatten(), w["2.weight"].flatten()])
    assert (pooled == 0).float().mean().item() == pytest.approx(0.9, abs=1e-3)
    assert pruning.masks == {}  # released at fit end (make_permanent=True); the zeros remain


def test_iterative_han_pruning_prunes_below_q_std() -> None:
    pruning = MagnitudePruning(
        schedule="iterative", q=1.0, start=0, end=16, frequency=8, make_permanent=False
    )
    module = tiny_module()
    tiny_trainer([pruning], max_epochs=3).fit(module, train_dataloaders=tiny_data())
    # |w| < 1.0 std of a Gaussian-like layer: roughly 60-70% pruned
    assert 0.4 < 1 - pruning.masks["0.weight"].float().mean().item() < 0.9


def test_epoch_unit_places_events_at_epoch_starts() -> None:
    pruning = MagnitudePruning(
        target_sparsity=0.6, schedule="linear", unit="epoch", start=1, end=3, frequency=1
    )
    tiny_trainer([pruning], max_epochs=4).fit(tiny_module(), train_dataloaders=tiny_data())
    assert pruning.schedule is not None and pruning.schedule.events() == [8, 16, 24]


def test_resume_mid_schedule_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> MagnitudePruning:
        return MagnitudePruning(target_sparsity=0.8, end=40, frequency=5, make_permanent=False)

    straight = make()
    module_a = tiny_module()
    tiny_trainer([straight], max_epochs=6).fit(module_a, train_dataloaders=tiny_data())

    first = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module_b = tiny_module()
    tiny_trainer([first, ckpt], max_epochs=3, enable_checkpointing=True).fit(
        module_b, train_dataloaders=tiny_data()
    )
    assert 0 < first.last_event < 40  # stopped mid-schedule
    resumed = make()
    module_c = tiny_module(seed=123)  # different initial weights: everything must come from the checkpoint
    tiny_trainer([resumed], max_epochs=6).fit(
        module_c, train_dataloaders=tiny_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed.masks.keys() == straight.masks.keys()
    for name in straight.masks:
        assert torch.equal(resumed.masks[name], straight.masks[name]), name
    for (name, a), (_, c) in zip(
        module_a.model.state_dict().items(), module_c.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(c, a, rtol=0, atol=1e-6, msg=name)


@pytest.mark.ddp
def test_ddp_two_processes_agree_with_each_other_and_with_one(tmp_path: Path) -> None:
    script = ROOT / "tests" / "scripts" / "prune_ddp.py"
    for devices in (1, 2):
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(devices)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "rank0_of1.pt", weights_only=True)
    r0 = torch.load(tmp_path / "rank0_of2.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1_of2.pt", weights_only=True)
    for name in one["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
        assert torch.equal(r0["masks"][name], one["masks"][name]), name
    for name in one["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        # the same global batches; only the order of float additions differs
        torch.testing.assert_close(r0["weights"][name], one["weights"][name], rtol=0, atol=1e-6)


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_sparsity": 1.0}, r"`target_sparsity` must be in \[0, 1\), got 1.0"),
        ({"target_sparsity": -0.1}, r"`target_sparsity` must be in \[0, 1\), got -0.1"),
        ({"start": 10, "end": 5}, r"`end` \(5\) is before `start` \(10\)"),
        ({"schedule": "exponential"}, r"`schedule` must be one of .*got 'exponential'"),
        ({"scope": "model"}, r"`scope` must be one of \('global', 'layer'\), got 'model'"),
        ({"criterion": "taylor"}, r"`criterion` must be one of \('magnitude', 'random'\), got 'taylor'"),
        ({"unit": "batch"}, r"`unit` must be one of \('step', 'epoch'\), got 'batch'"),
        ({"frequency": 0}, r"`frequency` must be >= 1, got 0"),
        ({"parameters": ["gamma"]}, r"`parameters` must be a non-empty subset of .*got \['gamma'\]"),
        ({"q": 0.0}, r"`q` must be > 0, got 0.0"),
        ({"remask_weights": "never"}, r"`remask_weights` must be 'auto' or 'always', got 'never'"),
        ({"start": -1}, r"`start` must be >= 0, got -1"),
        ({"initial_sparsity": 0.95}, r"`initial_sparsity` must be in \[0, target_sparsity=0.9\], got 0.95"),
        ({"layer_targets": {"fc*": 1.5}}, r"`layer_targets\['fc\*'\]` must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        MagnitudePruning(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include": "classifier*"}, r"include pattern 'classifier\*' matches no layer"),
        ({"exclude": "fc9"}, r"exclude pattern 'fc9' matches no layer"),
        ({"layer_targets": {"fc9.*": 0.5}}, r"layer_targets pattern 'fc9.\*' matches no pruned tensor"),
    ],
)
def test_patterns_that_match_nothing_fail_at_setup(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        tiny_trainer([MagnitudePruning(**kwargs)], max_epochs=1).fit(
            tiny_module(), train_dataloaders=tiny_data()
        )
