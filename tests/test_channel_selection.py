"""He et al. channel pruning (core.channel_selection): LASSO selection, least squares, whole-model pruning, replay."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effdl_lightning.core.channel_selection import (
    METHODS,
    channel_pruning_,
    lasso_channel_selection,
    relative_output_errors,
    select_channels,
)
from effdl_lightning.core.surgery import ChannelCut, apply_cut
from effdl_lightning.measure import profile
from effdl_lightning.models import create


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-Conv-ReLU, then a linear head on the flattened map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = torch.relu(self.c3(x))
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    """A residual add couples two producers; the block's inner conv is a plain one-producer group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 12, 3, padding=1)
        self.outer = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.stem(x))
        s = s + self.outer(torch.relu(self.inner(s)))
        return self.head(s.mean((2, 3)))


def _smooth_images(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    c, h, w = shape
    return F.avg_pool2d(torch.randn(n, c, h + 2, w + 2, generator=gen), 3, 1)


def _synthetic(c: int = 24, k: int = 9, n: int = 12, samples: int = 1500, seed: int = 0):
    """Correlated channels; ``y`` depends on a known subset of them (plus an offset)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(c) + 0.3 * torch.randn(c, c, generator=gen)
    x = torch.einsum("ick,cd->idk", torch.randn(samples, c, k, generator=gen), mix)
    weight = torch.randn(n, c, k, generator=gen)
    true = sorted(torch.randperm(c, generator=gen)[:7].tolist())
    mask = torch.zeros(c)
    mask[true] = 1.0
    offset = torch.randn(n, generator=gen)
    y = torch.einsum("ick,ock->io", x * mask[None, :, None], weight) + offset
    return x, weight, y, true, offset


# --- one layer ----------------------------------------------------------------------------------------------
def test_lasso_recovers_the_channels_the_response_depends_on_and_least_squares_is_exact() -> None:
    x, weight, y, true, offset = _synthetic()
    bias = torch.zeros(weight.shape[0])
    kept, new_w, new_b, info = lasso_channel_selection(x, weight, y, len(true), bias)
    assert kept == true
    assert info["nonzero"] <= len(true) and info["lambda"] > 0
    assert new_w.shape == (weight.shape[0], len(true), weight.shape[2]) and new_b is not None
    # the kept channels suffice: least squares (with the bias) reconstructs y exactly
    assert info["error_after"] < 1e-10
    prediction = torch.einsum("ick,ock->io", x[:, kept], new_w) + new_b
    torch.testing.assert_close(prediction, y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new_w, weight[:, kept], rtol=1e-4, atol=1e-4)  # the true weights
    torch.testing.assert_close(new_b, offset, rtol=1e-4, atol=1e-4)
    assert info["error_before"] > 0.1  # the other channels' weights were wrong


def test_conv_layout_without_bias_and_fixed_channels() -> None:
    x, weight, y, true, offset = _synthetic(seed=1)
    y = y - offset  # no offset: a layer without bias
    conv_weight = weight.reshape(weight.shape[0], weight.shape[1], 3, 3)
    fixed = [i for i in range(weight.shape[1]) if i not in true][:2]  # always kept, though useless
    kept, new_w, new_b, info = select_channels(x, conv_weight, y, len(true) + 2, fixed=fixed)
    assert kept == sorted([*true, *fixed]) and new_b is None
    assert new_w.shape == (weight.shape[0], len(kept), 3, 3)
    assert info["error_after"] < 1e-10
    torch.testing.assert_close(
        new_w[:, [kept.index(f) for f in fixed]], torch.zeros(weight.shape[0], 2, 3, 3)
    )


def test_l1_and_random_selection_and_reconstruct_off() -> None:
    x, weight, y, _, _ = _synthetic(seed=2)
    scores = torch.arange(weight.shape[1], dtype=torch.float32)
    kept, new_w, _, info = select_channels(x, weight, y, 5, method="l1", importance=scores, reconstruct=False)
    assert kept == list(range(weight.shape[1] - 5, weight.shape[1]))
    assert torch.equal(new_w, weight[:, kept])  # without least squares the kept weights are unchanged
    assert info["error_after"] == pytest.approx(info["error_selected"])
    runs = [
        select_channels(x, weight, y, 5, method="random", generator=torch.Generator().manual_seed(3))[0]
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == 5
    _, _, _, refit = select_channels(x, weight, y, 5, method="l1", importance=scores)
    assert refit["error_after"] < info["error_after"]


# --- whole models -------------------------------------------------------------------------------------------
def _replays(original: nn.Module, pruned: nn.Module, cuts: list[ChannelCut], shape: tuple[int, ...]) -> None:
    fresh = copy.deepcopy(original)
    for cut in cuts:
        apply_cut(fresh, ChannelCut.from_dict(cut.to_dict()))
    fresh.load_state_dict(pruned.state_dict())  # strict: every shape agrees
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned.eval()(x))


def _prune_all(model: nn.Module, batches: list[Tensor], ratio: float) -> dict[tuple[str, bool], object]:
    runs = {}
    for method, reconstruct in [
        ("lasso", True),
        ("l1", True),
        ("l1", False),
        ("random", True),
        ("random", False),
    ]:
        pruned = copy.deepcopy(model)
        result = channel_pruning_(
            pruned, batches, ratio, method, reconstruct, generator=torch.Generator().manual_seed(0)
        )
        runs[(method, reconstruct)] = (pruned, result)
    return runs


def test_small_cnn_lasso_least_squares_beats_l1_and_random_on_every_layer() -> None:
    torch.manual_seed(0)
    shape = (3, 16, 16)
    model = SmallCNN().eval()
    batches = list(_smooth_images(256, shape, seed=0).split(64))
    runs = _prune_all(model, batches, 0.5)
    pruned, result = runs[("lasso", True)]
    assert [r.consumer for r in result.layers] == ["c2", "c3", "fc"]  # fc reads c3's channels x 16 positions
    assert [(r.channels_before, r.channels_after) for r in result.layers] == [(16, 8), (24, 12), (16, 8)]
    assert "fc" in result.skipped and "model output" in result.skipped["fc"]
    assert result.layers[0].error_before == pytest.approx(0.0, abs=1e-10)  # nothing pruned before it
    for i, layer in enumerate(result.layers):
        assert layer.error_after < layer.error_selected  # least squares helps
        for key, (_, other) in runs.items():
            if key != ("lasso", True):
                assert layer.error_after < other.layers[i].error_after, (key, i)
    assert profile(pruned, shape, latency=False).macs < 0.4 * profile(model, shape, latency=False).macs
    _replays(model, pruned, result.cuts, shape)
    # the fitted errors are those of the pruned model's layer outputs on the same images
    held = relative_output_errors(model, pruned, batches, ["fc"], result.cuts)
    assert held["fc"] < 0.05


def test_vgg_small_pruned_by_lasso_runs_replays_and_has_fewer_macs() -> None:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = create("vgg_small", num_classes=10, input_shape=shape).eval()
    batches = list(_smooth_images(128, shape, seed=1).split(64))
    runs = _prune_all(model, batches, 0.5)
    pruned, result = runs[("lasso", True)]
    assert [r.consumer for r in result.layers] == ["features.4", "features.8", "head"]
    assert [r.channels_after for r in result.layers] == [16, 32, 64]
    for i, layer in enumerate(result.layers):  # against L1 (Li et al.) and random selection, both unrefit
        assert layer.error_after < runs[("l1", False)][1].layers[i].error_after
        assert layer.error_after < runs[("random", False)][1].layers[i].error_after
    assert pruned(torch.randn(2, *shape)).shape == (2, 10)
    assert profile(pruned, shape, latency=False).macs < 0.3 * profile(model, shape, latency=False).macs
    _replays(model, pruned, result.cuts, shape)
    record = result.to_dict()
    assert record["method"] == "lasso" and len(record["cuts"]) == 3


def test_coupled_groups_are_skipped_with_a_reason_and_patterns_select_groups() -> None:
    torch.manual_seed(0)
    model = Residual().eval()
    batches = [_smooth_images(16, (3, 8, 8), seed=2)]
    result = channel_pruning_(copy.deepcopy(model), batches, 0.5)
    assert [r.group for r in result.layers] == ["inner"]
    assert "coupled producers" in result.skipped["stem"]
    only = channel_pruning_(copy.deepcopy(model), batches, 0.5, exclude=["inner"])
    assert not only.layers and "exclude" in only.skipped["inner"]
    assert channel_pruning_(copy.deepcopy(model), batches, 0.0).layers == []  # nothing to remove


def test_model_dtype_is_kept() -> None:
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    batches = [_smooth_images(32, (3, 16, 16), seed=3)]
    result = channel_pruning_(model, batches, 0.25, "l1")
    assert len(result.layers) == 3
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(batches[0].double()).dtype == torch.float64


# --- errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match=rf"ratio must be in \[0, 1\), got {ratio}"):
        channel_pruning_(SmallCNN(), [torch.zeros(2, 3, 16, 16)], ratio)


def test_bad_method() -> None:
    with pytest.raises(ValueError, match=r"method must be one of .*'lasso'.*'l1'.*'random'.*got 'l2'"):
        channel_pruning_(SmallCNN(), [torch.zeros(2, 3, 16, 16)], 0.5, method="l2")
    x, weight, y, _, _ = _synthetic()
    with pytest.raises(ValueError, match="method must be one of"):
        select_channels(x, weight, y, 3, method="taylor")
    with pytest.raises(ValueError, match="needs `importance`"):
        select_channels(x, weight, y, 3, method="l1")
    with pytest.raises(ValueError, match="n_keep must be in"):
        select_channels(x, weight, y, 0)
    assert set(METHODS) == {"lasso", "l1", "random"}


class Concat(nn.Module):
    """A conv reading the concatenation of two producers: each group is selected with the other one fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(14, 10, 3, padding=2, dilation=2, stride=2)
        self.fc = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


def test_a_consumer_of_two_groups_with_dilation_and_stride() -> None:
    torch.manual_seed(0)
    model = Concat().eval()
    batches = [_smooth_images(32, (3, 8, 8), seed=4)]
    pruned = copy.deepcopy(model)
    result = channel_pruning_(pruned, batches, 0.5)
    assert [(r.group, r.consumer, r.channels_after) for r in result.layers] == [
        ("a", "c", 4),
        ("b", "c", 3),
        ("c", "fc", 5),
    ]
    assert pruned.c.in_channels == 7
    assert all(r.error_after < 0.2 for r in result.layers)
    _replays(model, pruned, result.cuts, (3, 8, 8))


@pytest.mark.parametrize("seed", [0, 3])
def test_lasso_selection_agrees_with_scikit_learn(seed: int) -> None:
    """The channels kept are the nonzero coefficients of sklearn's Lasso at the λ where exactly n_keep remain."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(seed)
    samples, c, k, n, n_keep = 400, 16, 4, 6, 6
    mix = torch.eye(c) + 0.5 * torch.randn(c, c, generator=gen)
    x = torch.einsum("ick,cd->idk", torch.randn(samples, c, k, generator=gen), mix).double()
    weight = torch.randn(n, c, k, generator=gen).double()
    scale = torch.rand(1, c, 1, generator=gen).double()  # no exactly sparse answer
    y = torch.einsum("ick,ock->io", x, weight * scale) + 0.3 * torch.randn(samples, n, generator=gen).double()
    kept, _, _, _ = lasso_channel_selection(x, weight, y, n_keep)
    z = torch.einsum("ick,ock->cio", x, weight).reshape(c, -1).T.numpy()
    target = y.reshape(-1).numpy()
    lo, hi = 0.0, float(abs(z.T @ target).max() / len(target))
    lasso = linear_model.Lasso(alpha=hi, fit_intercept=False, max_iter=100000, tol=1e-10)
    for _ in range(60):  # bisection on alpha, as in He et al.'s code
        lasso.alpha = (lo + hi) / 2
        lasso.fit(z, target)
        nonzero = int((lasso.coef_ != 0).sum())
        if nonzero == n_keep:
            break
        lo, hi = (lasso.alpha, hi) if nonzero > n_keep else (lo, lasso.alpha)
    assert nonzero == n_keep
    assert kept == sorted(int(i) for i in (lasso.coef_ != 0).nonzero()[0])
