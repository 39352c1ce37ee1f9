"""Low-rank factorization: exact at full rank, error vs rank, rank rules, record replay, the callback in fit, DDP."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from effdl_lightning import load_compressed
from effdl_lightning.callbacks import LowRankFactorization, MagnitudePruning, QuantizationAwareTraining
from effdl_lightning.core.lowrank import (
    LayerCost,
    LowRankConfig,
    ResponseStatistics,
    add_nuclear_norm_gradient_,
    apply_low_rank_entry,
    energy_kept,
    factorize_jaderberg,
    factorize_jaderberg_data,
    factorize_svd,
    factorize_zhang,
    factorize_zhang_asymmetric,
    layer_spec,
    low_rank_,
    max_rank,
    rank_for_ratio,
    relative_error,
    round_rank,
    select_ranks_for_budget,
    weight_matrix,
)
from effdl_lightning.core.quant.modules import quantized_layers
from effdl_lightning.core.record import CHECKPOINT_KEY, get_record, replay
from effdl_lightning.measure import profile
from effdl_lightning.models import create
from tests.structured_helpers import cnn_module, cnn_trainer, image_data, small_cnn

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ("svd", "jaderberg", "jaderberg_data", "zhang", "zhang_asymmetric")


def fit_layer(layer: nn.Module, method: str, rank: int, xs: list[torch.Tensor]) -> nn.Module:
    """Factorize one layer with ``method`` on calibration inputs ``xs`` (inputs of the original layer)."""
    if method == "svd":
        return factorize_svd(layer, rank)  # type: ignore[arg-type]
    if method == "jaderberg":
        return factorize_jaderberg(layer, rank)  # type: ignore[arg-type]
    if method == "jaderberg_data":
        return factorize_jaderberg_data(layer, rank, xs, steps=10)  # type: ignore[arg-type]
    conv = isinstance(layer, nn.Conv2d)
    channels = layer.out_channels if conv else layer.out_features  # type: ignore[union-attr]
    asymmetric = method == "zhang_asymmetric"
    stats = ResponseStatistics(int(channels), asymmetric=asymmetric, conv=conv)
    with torch.no_grad():
        for x in xs:
            y = layer(x)
            stats.update(y, y if asymmetric else None)
    if asymmetric:
        return factorize_zhang_asymmetric(
            layer,  # type: ignore[arg-type]
            rank,
            stats.mean,
            stats.mean_approx,
            stats.cross(),
            stats.covariance_approx(),
        )
    return factorize_zhang(layer, rank, stats.mean, stats.covariance())  # type: ignore[arg-type]


LAYERS = {
    "linear": lambda: nn.Linear(12, 7),
    "linear_no_bias": lambda: nn.Linear(9, 16, bias=False),
    "conv3x3": lambda: nn.Conv2d(3, 6, 3, padding=1),
    "strided_dilated": lambda: nn.Conv2d(3, 5, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
    "reflect_no_bias": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", bias=False),
    "same": lambda: nn.Conv2d(3, 4, 3, padding="same"),
}


def _inputs(layer: nn.Module, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if isinstance(layer, nn.Linear):
        return [torch.randn(40, layer.in_features, generator=g) for _ in range(n)]
    return [torch.randn(4, layer.in_channels, 11, 13, generator=g) for _ in range(n)]  # type: ignore[union-attr]


@pytest.mark.parametrize("layer_kind", list(LAYERS))
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_factorization_is_exact_at_full_rank(method: str, layer_kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[layer_kind]()
    if isinstance(layer, nn.Linear) and "jaderberg" in method:
        with pytest.raises(
            ValueError, match=r"method 'jaderberg.*' applies to convs; for nn.Linear use one of"
        ):
            max_rank(layer, method)
        return
    xs = _inputs(layer)
    factors = fit_layer(layer, method, max_rank(layer, method), xs)
    assert isinstance(factors, nn.Sequential) and all(type(m) is type(layer) for m in factors)
    x = _inputs(layer, 1, seed=5)[0]  # unseen inputs
    with torch.no_grad():
        torch.testing.assert_close(factors(x), layer(x), rtol=0, atol=2e-5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_output_error_falls_as_the_rank_grows(method: str) -> None:
    torch.manual_seed(1)
    layer = nn.Conv2d(4, 8, 3, padding=1)
    xs = _inputs(layer, 2)
    ranks = range(1, max_rank(layer, method) + 1)  # 8 (channel methods) or 12 (Jaderberg's)
    errors = [relative_error(layer, fit_layer(layer, method, r, xs), xs) for r in ranks]
    assert errors[0] > 0.3 and errors[-1] < 1e-5
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors)), errors
    if method == "jaderberg_data":  # data reconstruction fits the data at least as well as the filters do
        filters = [relative_error(layer, factorize_jaderberg(layer, r), xs) for r in ranks]
        assert all(d <= f + 1e-7 for d, f in zip(errors, filters, strict=True))


def test_svd_is_the_best_rank_r_approximation_and_jaderberg_splits_the_kernel() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(10, 6)
    factors = factorize_svd(linear, 3)
    u, s, vh = torch.linalg.svd(linear.weight.detach())
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    torch.testing.assert_close(factors[1].weight @ factors[0].weight, best, rtol=0, atol=1e-5)
    conv = nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2))
    pair = factorize_jaderberg(conv, 4)
    assert pair[0].kernel_size == (3, 1) and pair[0].stride == (2, 1) and pair[0].padding == (1, 0)
    assert pair[1].kernel_size == (1, 5) and pair[1].stride == (1, 2) and pair[1].padding == (0, 2)
    assert pair[0].bias is None and pair[1].bias is not None


def tiny_net(bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(16, 10, 3, stride=2, padding=1),
    )


def _calibration(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 10, 10, generator=g) for _ in range(n)]


def _output_error(net: nn.Module, reference: nn.Module, xs: list[torch.Tensor]) -> float:
    with torch.no_grad():
        num = sum(float((net(x) - reference(x)).pow(2).sum()) for x in xs)
        return (num / sum(float(reference(x).pow(2).sum()) for x in xs)) ** 0.5


def test_zhang_asymmetric_is_at_least_as_good_as_linear_on_the_whole_model() -> None:
    torch.manual_seed(0)
    reference = tiny_net()
    xs = _calibration()
    errors = {}
    for method in ("zhang", "zhang_asymmetric"):
        net = tiny_net()
        net.load_state_dict(reference.state_dict())
        low_rank_(net, xs, LowRankConfig(conv=method, rank=4))
        errors[method] = _output_error(net, reference, xs)
    # the asymmetric fit of the last layer minimizes exactly this error over the same family
    assert errors["zhang_asymmetric"] <= errors["zhang"] + 1e-7
    assert errors["zhang_asymmetric"] < 0.95 * errors["zhang"]


def test_rank_rules_ratio_rank_and_energy_are_honoured() -> None:
    torch.manual_seed(0)
    xs = _calibration()
    net = tiny_net()
    full = {"0": 12, "2": 16, "4": 10}  # channel SVD: min(N, C·k·k)
    result = low_rank_(net, xs, LowRankConfig(conv="svd", rank_ratio=0.5))
    assert {r.name: r.rank for r in result.layers} == {n: rank_for_ratio(f, 0.5) for n, f in full.items()}
    assert {r.name: r.full_rank for r in result.layers} == full

    net = tiny_net()
    result = low_rank_(net, xs, LowRankConfig(conv="jaderberg", rank=5))
    assert {r.name: r.rank for r in result.layers} == {"0": 5, "2": 5, "4": 5}
    assert net[0][0].out_channels == 5 and net[0][0].kernel_size == (3, 1)

    net = tiny_net()
    reference = tiny_net()
    reference.load_state_dict(net.state_dict())
    result = low_rank_(net, xs, LowRankConfig(conv="zhang", energy=0.9))
    for layer in result.layers:
        assert layer.energy >= 0.9
    # the previous rank would not reach the threshold
    from effdl_lightning.core.lowrank.statistics import probe

    probes = probe(reference, xs, ["0", "2", "4"])
    for layer in result.layers:
        stats = probes[layer.name].stats
        assert stats is not None
        spectrum = torch.linalg.eigvalsh(stats.covariance()).flip(0)
        assert layer.rank == 1 or energy_kept(spectrum, layer.rank - 1) < 0.9


def test_mac_budget_is_met_and_the_mac_count_matches_the_profiler() -> None:
    torch.manual_seed(0)
    xs = _calibration()
    net = tiny_net()
    macs = profile(net, (3, 10, 10), latency=False).macs
    result = low_rank_(net, xs, LowRankConfig(conv="zhang", mac_budget=0.5))
    assert result.macs_before == macs
    after = profile(net, (3, 10, 10), latency=False).macs
    assert after == result.macs_after <= 0.5 * macs
    assert after > 0.4 * macs  # the greedy stops once the budget holds
    with pytest.raises(
        ValueError, match=r"MAC budget of .* cannot be reached: with every candidate layer at rank 1"
    ):
        low_rank_(tiny_net(), xs, LowRankConfig(conv="svd", mac_budget=0.01))


def test_greedy_selection_cuts_the_layer_whose_energy_is_concentrated() -> None:
    steep = LayerCost(torch.tensor([100.0, 1.0, 0.5, 0.1, 0.01, 0.001]), macs=600.0, macs_per_rank=50.0)
    flat = LayerCost(torch.ones(6), macs=600.0, macs_per_rank=50.0)
    # both factorized at full rank cost 2 x 300: a budget of 300 removes 6 eigenvalues, the steep layer's tail
    # first (it costs almost no energy), then one of the flat layer's
    assert select_ranks_for_budget({"steep": steep, "flat": flat}, budget=300.0) == {"steep": 1, "flat": 5}
    assert select_ranks_for_budget({"steep": steep, "flat": flat}, budget=1200.0) == {
        "steep": None,
        "flat": None,
    }


def test_round_rank_keeps_ranks_on_multiples_within_the_full_rank() -> None:
    assert [round_rank(r, 128, 8) for r in (1, 7, 11, 12, 79, 125, 200)] == [8, 8, 8, 16, 80, 128, 128]
    assert [round_rank(r, 128, 8, up=True) for r in (1, 8, 9, 79)] == [8, 8, 16, 80]
    assert round_rank(5, 6, 8) == 6  # a layer smaller than the block keeps its full rank
    assert [round_rank(r, 10) for r in (0, 3, 12)] == [1, 3, 10]  # round_to=1: only clamped
    with pytest.raises(ValueError, match=r"round_to must be an integer >= 1, got 0"):
        round_rank(3, 10, 0)


def test_greedy_with_round_to_moves_in_blocks_and_still_meets_the_budget() -> None:
    g = torch.Generator().manual_seed(0)
    layers = {
        name: LayerCost(torch.rand(64, generator=g).pow(k).sort(descending=True).values, 64 * 64.0, 2 * 64.0)
        for name, k in (("a", 1), ("b", 4), ("c", 8))
    }
    total = sum(c.macs for c in layers.values())
    for q in (1, 8):
        ranks = select_ranks_for_budget(layers, 0.3 * total, round_to=q)
        used = sum(c.macs if ranks[n] is None else ranks[n] * c.macs_per_rank for n, c in layers.items())
        assert used <= 0.3 * total
        assert all(r is None or r % q == 0 for r in ranks.values())
        if q == 8:
            # the block greedy overshoots the budget by less than one block of the cheapest layer
            assert used > 0.3 * total - 8 * 2 * 64.0
    # a budget only rank 1 everywhere meets cannot be reached in blocks of 8
    with pytest.raises(ValueError, match=r"cannot be reached: with every candidate layer at rank 8"):
        select_ranks_for_budget(layers, 3 * 2 * 64.0, round_to=8)


def test_round_to_applies_to_every_rank_rule_and_to_the_callback() -> None:
    torch.manual_seed(0)
    xs = _calibration()
    full = {"0": 12, "2": 16, "4": 10}
    net = tiny_net()
    result = low_rank_(net, xs, LowRankConfig(conv="svd", rank_ratio=0.45, round_to=4))
    assert {r.name: r.rank for r in result.layers} == {"0": 4, "2": 8, "4": 4}  # 5.4, 7.2, 4.5 -> nearest x4
    net = tiny_net()
    result = low_rank_(net, xs, LowRankConfig(conv="zhang", energy=0.9, round_to=4))
    assert all(r.rank % 4 == 0 or r.rank == full[r.name] for r in result.layers)
    assert all(r.energy >= 0.9 for r in result.layers)  # rounded up: the threshold still holds
    net = tiny_net()
    result = low_rank_(net, xs, LowRankConfig(conv="zhang", mac_budget=0.5, round_to=4))
    assert all(r.rank % 4 == 0 for r in result.layers) and result.macs_after <= 0.5 * result.macs_before
    callback = LowRankFactorization(method="svd", rank_ratio=0.45, round_to=4)
    assert callback.config.round_to == 4


def test_unsupported_layers_are_skipped_with_a_reason() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 1),
        nn.Flatten(),
        nn.Linear(8 * 25, 3),
    )
    result = low_rank_(net, [torch.randn(2, 4, 5, 5)], LowRankConfig(linear=None, conv="svd", rank_ratio=0.5))
    assert [r.name for r in result.layers] == ["0"]
    assert "grouped conv (groups=8)" in result.skipped["1"]
    # a 1x1 conv 8 -> 8 at rank 4 costs 4 x (8 + 8) MACs per position, as much as the layer
    assert result.skipped["2"] == "rank 4 costs 1,600 MACs, not fewer than the layer's 1,600"
    assert result.skipped["4"] == "no method for nn.Linear layers"


def test_the_record_rebuilds_the_factorized_model() -> None:
    torch.manual_seed(0)
    xs = _calibration()
    net = tiny_net()
    result = low_rank_(net, xs, LowRankConfig(conv="jaderberg", rank_ratio=0.5), exclude="4")
    assert list(result.entry["layers"]) == ["0", "2"]
    assert result.entry["layers"]["0"] == layer_spec(tiny_net()[0], "jaderberg", 4)  # round(0.5 · 9)
    fresh = tiny_net(bias=True)
    replay(fresh, [result.entry])
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(xs[0]), net(xs[0]), rtol=0, atol=0)
    with pytest.raises(
        ValueError, match=r"the record factorizes '0' as a Conv2d 3->12, but this model's layer"
    ):
        apply_low_rank_entry(nn.Sequential(nn.Conv2d(3, 4, 3)), result.entry)


@pytest.mark.parametrize(
    ("name", "method", "rule"),
    [("resnet20", "zhang_asymmetric", {"energy": 0.95}), ("mobilenet_v2", "svd", {"rank_ratio": 0.25})],
)
def test_any_architecture_converts_and_replays(name: str, method: str, rule: dict[str, float]) -> None:
    torch.manual_seed(0)
    shape = (3, 16, 16)
    net = create(name, num_classes=4, input_shape=shape).eval()
    xs = [torch.randn(4, *shape)]
    result = low_rank_(net, xs, LowRankConfig.from_method(method, **rule))
    assert result.layers and result.macs_after < result.macs_before
    if name == "mobilenet_v2":
        assert any("grouped conv" in reason for reason in result.skipped.values())
    fresh = create(name, num_classes=4, input_shape=shape).eval()
    replay(fresh, [result.entry])
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(xs[0]), net(xs[0]), rtol=0, atol=0)


def test_nuclear_norm_gradient_is_the_gradient_of_the_penalty() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    for method in ("svd", "jaderberg"):
        conv.weight.grad = None
        norm = add_nuclear_norm_gradient_({"c": (conv, method)}, 0.1)
        expected = conv.weight.detach().clone().requires_grad_(True)
        probe_layer = nn.Conv2d(3, 4, 3)
        probe_layer.weight = nn.Parameter(expected)
        penalty = torch.linalg.matrix_norm(weight_matrix(probe_layer, method), ord="nuc")
        (0.1 * penalty).backward()
        assert norm == pytest.approx(penalty.item(), rel=1e-5)
        torch.testing.assert_close(conv.weight.grad, probe_layer.weight.grad, rtol=0, atol=1e-6)


# --- the callback -------------------------------------------------------------------------------------------------
class Spy(Callback):
    """Per epoch: parameter shapes, whether the optimizer holds the model's parameters, weights, the LR."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lr: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # the LR the epoch trains with
            self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        opt = trainer.optimizers[0]
        self.seen.append(
            {
                "shapes": {n: tuple(p.shape) for n, p in pl_module.model.named_parameters()},
                "held": {id(p) for g in opt.param_groups for p in g["params"]}
                == {id(p) for p in pl_module.parameters()},
                "weights": {n: p.detach().clone() for n, p in pl_module.model.named_parameters()},
            }
        )


def test_conversion_mid_fit_rebuilds_the_optimizer_and_training_continues_on_the_factors() -> None:
    lowrank = LowRankFactorization(
        method={"conv": "jaderberg", "linear": "svd"}, rank_ratio=0.5, start_epoch=1
    )
    spy = Spy()
    module = cnn_module()
    trainer = cnn_trainer([lowrank, spy], max_epochs=3)
    trainer.fit(module, train_dataloaders=image_data())
    before, after, last = spy.seen
    assert before["shapes"]["4.weight"] == (24, 16, 3, 3)
    # Jaderberg: full rank min(16·3, 24·3) = 48, half of it; SVD of the 216 -> 32 linear: 16
    assert after["shapes"]["4.0.weight"] == (24, 16, 3, 1) and after["shapes"]["4.1.weight"] == (24, 24, 1, 3)
    assert after["shapes"]["9.0.weight"] == (16, 216) and after["shapes"]["9.1.weight"] == (32, 16)
    assert after["held"] and last["held"]
    assert spy.lr == pytest.approx([0.05, 0.05 * 0.7, 0.05 * 0.7**2])  # the schedule continues
    for name in ("4.0.weight", "4.1.weight", "9.0.weight"):  # a step after the swap moves the new parameters
        assert not torch.equal(after["weights"][name], last["weights"][name]), name
    assert [e["kind"] for e in get_record(module.model)] == ["low_rank"]
    assert trainer.logged_metrics["compress/macs"] == lowrank.costs["macs"] < lowrank.costs["macs_before"]
    assert float(trainer.logged_metrics["compress/lowrank_layers"]) == len(lowrank.layers) == 4


def test_resume_after_conversion_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> LowRankFactorization:
        return LowRankFactorization(
            method={"conv": "zhang_asymmetric", "linear": "svd"}, mac_budget=0.6, start_epoch=1, exclude="11"
        )

    straight = cnn_module()
    cnn_trainer([make()], max_epochs=3).fit(straight, train_dataloaders=image_data())

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = cnn_module()
    cnn_trainer([make(), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        first, train_dataloaders=image_data()
    )
    stored = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert [e["kind"] for e in stored[CHECKPOINT_KEY]["entries"]] == ["low_rank"]

    resumed = cnn_module(seed=7)  # a fresh dense model with other weights
    callback = make()
    cnn_trainer([callback], max_epochs=3).fit(
        resumed, train_dataloaders=image_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert callback.done and len(get_record(resumed.model)) == 1  # replayed, not factorized twice
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and any(k.endswith(".1.weight") for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_load_compressed_rebuilds_the_factorized_model(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = cnn_module()
    cnn_trainer(
        [LowRankFactorization(method="zhang", energy=0.9), ckpt], max_epochs=1, enable_checkpointing=True
    ).fit(module, train_dataloaders=image_data())
    x = torch.randn(5, 1, 12, 12)
    module.eval()
    with torch.no_grad():
        expected = module(x)
    net = load_compressed(small_cnn(), tmp_path / "last.ckpt").eval()
    fresh = load_compressed(cnn_module(seed=3), str(tmp_path / "last.ckpt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_factorize_then_prune_then_quantize_in_one_fit() -> None:
    module = cnn_module()
    lowrank = LowRankFactorization(method={"conv": "svd", "linear": "svd"}, rank_ratio=0.5)
    pruning = MagnitudePruning(target_sparsity=0.5, schedule="one_shot", make_permanent=False)
    qat = QuantizationAwareTraining(
        scheme="dorefa", weight_bits=3, first_layer="quantize", last_layer="quantize"
    )
    cnn_trainer([lowrank, pruning, qat], max_epochs=2).fit(module, train_dataloaders=image_data())
    layers = quantized_layers(module.model)
    assert {"0.0", "0.1", "4.0", "4.1", "9.0", "9.1", "11.0", "11.1"} <= set(layers)
    assert [e["kind"] for e in get_record(module.model)] == ["low_rank", "quantize"]
    for name, layer in layers.items():
        mask = pruning.masks[f"{name}.weight"]
        assert 0.4 <= 1 - mask.float().mean() <= 0.6, name
        assert bool((layer.weight[~mask] == 0).all()), name
        assert bool((layer.quantized_weight()[~mask] == 0).all()), name


def test_the_nuclear_norm_regularizer_lowers_the_spectrum_before_conversion() -> None:
    norms = {}
    for weight in (0.0, 0.2):
        module = cnn_module()
        callback = LowRankFactorization(method="svd", start_epoch=5, nuclear_norm=weight)
        trainer = cnn_trainer([callback], max_epochs=2)
        with pytest.warns(UserWarning, match=r"LowRankFactorization\(start_epoch=5\) never factorizes"):
            trainer.fit(module, train_dataloaders=image_data())
        assert not callback.done and not get_record(module.model)
        layers = {"4": (module.model[4], "svd"), "9": (module.model[9], "svd")}
        norms[weight] = add_nuclear_norm_gradient_(layers, 0.0)
        assert ("compress/nuclear_norm" in trainer.logged_metrics) == (weight > 0)
    assert norms[0.2] < 0.8 * norms[0.0]


@pytest.mark.ddp
def test_ddp_two_processes_agree_with_one(tmp_path: Path) -> None:
    script = ROOT / "tests" / "scripts" / "low_rank_ddp.py"
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
    assert list(one["weights"]) == list(r0["weights"]) and "4.1.weight" in one["weights"]
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
    # factors are defined up to an orthogonal change of basis: compare the functions, not the factors
    torch.testing.assert_close(r0["outputs"], one["outputs"], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "tucker"}, r"unknown low-rank method 'tucker'; allowed: \('svd', 'jaderberg'"),
        ({"method": {"conv": "cp"}}, r"conv method 'cp' is not one of \('svd', 'jaderberg'"),
        ({"method": {"linear": "jaderberg"}}, r"linear method 'jaderberg' is not one of \('svd', 'zhang'"),
        ({"method": {"dense": "svd"}}, r"method keys must be 'linear' and/or 'conv', got \['dense'\]"),
        ({"method": {"conv": None}}, r"no method: give a method for linear layers, convs, or both"),
        (
            {"rank": 4, "energy": 0.9},
            r"give at most one of rank, energy, mac_budget .* got \['rank', 'energy'\]",
        ),
        ({"rank": 0}, r"rank must be an integer >= 1, got 0"),
        ({"rank_ratio": 1.5}, r"rank_ratio must be in \(0, 1\], got 1.5"),
        ({"rank_ratio": None}, r"no rank rule: give rank, rank_ratio, energy or mac_budget"),
        ({"energy": 0.0}, r"energy must be in \(0, 1\], got 0.0"),
        ({"mac_budget": 2.0}, r"mac_budget must be in \(0, 1\], got 2.0"),
        ({"data_steps": -1}, r"data_steps must be >= 0, got -1"),
        ({"round_to": 0}, r"round_to must be an integer >= 1, got 0"),
        ({"round_to": 2.5}, r"round_to must be an integer >= 1, got 2.5"),
        ({"start_epoch": -1}, r"`start_epoch` must be >= 0, got -1"),
        ({"calibration_batches": 0}, r"`calibration_batches` must be >= 1, got 0"),
        ({"nuclear_norm": -0.1}, r"`nuclear_norm` must be >= 0, got -0.1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        LowRankFactorization(**kwargs)


def test_core_errors_name_the_bad_value() -> None:
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 9\] for this layer, got 10"):
        layer_spec(conv, "jaderberg", 10)
    with pytest.raises(ValueError, match=r"unknown low-rank method 'pca'; allowed:"):
        max_rank(conv, "pca")
    with pytest.raises(ValueError, match=r"a grouped conv \(groups=2\) cannot be factorized"):
        factorize_svd(nn.Conv2d(4, 4, 3, groups=2), 1)
    with pytest.raises(ValueError, match=r"takes exactly nn.Linear or nn.Conv2d, got Conv1d"):
        factorize_svd(nn.Conv1d(4, 4, 3), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no calibration batch"):
        low_rank_(tiny_net(), [])


def test_a_pattern_that_matches_nothing_or_an_unreachable_budget_fails_clearly() -> None:
    with pytest.raises(MisconfigurationException, match=r"include pattern 'conv9' matches no layer"):
        cnn_trainer([LowRankFactorization(include="conv9")], max_epochs=1).fit(
            cnn_module(), train_dataloaders=image_data()
        )
    with pytest.raises(
        MisconfigurationException, match=r"LowRankFactorization: the MAC budget .* cannot be reached"
    ):
        cnn_trainer([LowRankFactorization(mac_budget=0.01)], max_epochs=1).fit(
            cnn_module(), train_dataloaders=image_data()
        )
