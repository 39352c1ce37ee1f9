"""WeightSharing (Deep Compression §3): k-means, shared weights, summed centroid gradients, fit, resume, errors."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.callbacks.weight_sharing import WeightSharing
from effdl_lightning.core.weight_sharing import (
    PRUNED,
    cluster_gradient_,
    kmeans_1d,
    share_weights_,
    snap_,
)
from effdl_lightning.export import load_deep_compressed, save_deep_compressed
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

CONF = Path(__file__).resolve().parents[1] / "conf" / "compression" / "weight_sharing.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny nets: intra-op threads only add overhead (10x slower steps on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(module: nn.Module, name: str) -> nn.Linear:
    """The Linear layer ``name`` of ``module.model`` (or of ``module``, when it has no ``model``)."""
    model = getattr(module, "model", module)
    assert isinstance(model, nn.Module)
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _distinct_nonzero(weight: torch.Tensor) -> int:
    return torch.unique(weight[weight != 0]).numel()


# ------------------------------------------------------------------------------------------------- core
def test_kmeans_linear_init_is_evenly_spaced_between_min_and_max() -> None:
    values = torch.tensor([-1.0, 0.5, 2.0, 3.0])
    centroids, assignments = kmeans_1d(values, 4, init="linear", iters=0)
    torch.testing.assert_close(centroids, torch.tensor([-1.0, 1 / 3, 5 / 3, 3.0]))
    assert assignments.tolist() == [0, 1, 2, 3]
    # Lloyd: init [0, 10], midpoint 5 -> {0, 1, 2} and {10}; means [1, 10]; then stable
    centroids, assignments = kmeans_1d(torch.tensor([0.0, 1.0, 2.0, 10.0]), 2)
    assert centroids.tolist() == [1.0, 10.0] and assignments.tolist() == [0, 0, 0, 1]


def test_kmeans_density_and_random_inits() -> None:
    values = torch.arange(9.0)
    centroids, _ = kmeans_1d(values, 3, init="density", iters=0)
    assert centroids.tolist() == [0.0, 4.0, 8.0]  # quantiles 0, 1/2, 1 of the CDF
    first, _ = kmeans_1d(values, 3, init="random", iters=0, seed=3)
    again, _ = kmeans_1d(values, 3, init="random", iters=0, seed=3)
    assert torch.equal(first, again) and set(first.tolist()) <= set(values.tolist())


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_converges_to_nearest_assignment_and_cluster_means(init: str) -> None:
    values = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    centroids, assignments = kmeans_1d(values, 8, init=init)
    assert torch.all(centroids[1:] >= centroids[:-1])
    brute = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    assert torch.equal(centroids[brute], centroids[assignments])  # nearest (up to equal centroids)
    for j in assignments.unique():
        torch.testing.assert_close(centroids[j], values[assignments == j].mean(), atol=1e-6, rtol=0)


def test_kmeans_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`k` must be a positive int, got 0"):
        kmeans_1d(torch.ones(3), 0)
    with pytest.raises(ValueError, match=r"`init` must be one of .*'linear'.*got 'kmeans\+\+'"):
        kmeans_1d(torch.ones(3), 2, init="kmeans++")
    with pytest.raises(ValueError, match=r"`iters` must be >= 0, got -1"):
        kmeans_1d(torch.ones(3), 2, iters=-1)
    with pytest.raises(ValueError, match=r"`values` must be floating point"):
        kmeans_1d(torch.ones(3, dtype=torch.long), 2)


def test_share_weights_keeps_pruned_zeros_and_at_most_2_pow_bits_values() -> None:
    weight = torch.randn(40, 30, generator=torch.Generator().manual_seed(1))
    weight[torch.rand(40, 30, generator=torch.Generator().manual_seed(2)) < 0.6] = 0.0
    zeros = weight == 0
    shared = share_weights_(weight, bits=3)
    assert _distinct_nonzero(weight) <= 8 and shared.centroids.shape == (8,)
    assert torch.all(weight[zeros] == 0) and torch.all(weight[~zeros] != 0)
    assert torch.equal(shared.assignments == PRUNED, zeros)
    assert torch.equal(weight, shared.decode())
    # an explicit mask prunes where it is False, even nonzero weights
    weight2 = torch.randn(10, 10)
    mask = torch.rand(10, 10) < 0.5
    shared2 = share_weights_(weight2, bits=2, mask=mask, init="density")
    assert torch.all(weight2[~mask] == 0) and torch.equal(shared2.mask, mask)


def test_share_weights_rejects_bad_arguments() -> None:
    for bits in (0, 17):
        with pytest.raises(ValueError, match=rf"`bits` must be an int in \[1, 16\], got {bits}"):
            share_weights_(torch.randn(3, 3), bits)
    with pytest.raises(ValueError, match=r"`mask` must have the weight's shape \(3, 3\), got \(2,\)"):
        share_weights_(torch.randn(3, 3), 2, mask=torch.ones(2, dtype=torch.bool))


def test_centroid_gradient_is_the_hand_summed_gradient_of_the_cluster() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.2, 0.0], [0.9, 1.0, 0.15]]))
    # 1 bit: init [0.1, 1.0] -> clusters {0.1, 0.2, 0.15} and {0.9, 1.0}; (0, 2) is pruned
    shared = share_weights_(layer.weight, bits=1)
    assert shared.assignments.tolist() == [[0, 0, PRUNED], [1, 1, 0]]
    torch.testing.assert_close(shared.centroids, torch.tensor([0.15, 0.95]))
    layer(torch.tensor([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]])).pow(2).sum().backward()
    assert layer.weight.grad is not None
    g = layer.weight.grad.clone()
    centroid_grad = cluster_gradient_(layer.weight, shared)
    expected = torch.stack([g[0, 0] + g[0, 1] + g[1, 2], g[1, 0] + g[1, 1]])
    assert centroid_grad is not None
    torch.testing.assert_close(centroid_grad, expected)
    c0, c1 = expected.tolist()
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[c0, c0, 0.0], [c1, c1, c0]]))
    # one SGD step moves every member by the centroid's step
    torch.optim.SGD([layer.weight], lr=0.1).step()
    torch.testing.assert_close(
        layer.weight.detach(), (shared.centroids - 0.1 * expected)[shared.assignments] * shared.mask
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clusters_stay_single_values_under_optimizer_steps(optimizer: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    with torch.no_grad():
        layer.weight[:, :5] = 0.0
    shared = share_weights_(layer.weight, bits=2)
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
        if optimizer == "sgd"
        else torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-3)
    )
    start = shared.centroids.clone()
    for _ in range(20):
        opt.zero_grad()
        layer(torch.randn(8, 20)).pow(2).mean().backward()
        cluster_gradient_(layer.weight, shared)
        opt.step()
        before_snap = layer.weight.detach().clone()
        snap_(layer.weight, shared)
        assert torch.equal(layer.weight, before_snap)  # element-wise optimizers keep clusters exact
    assert _distinct_nonzero(layer.weight) <= 4 and torch.all(layer.weight[:, :5] == 0)
    assert not torch.equal(shared.centroids, start)


def test_snap_resets_clusters_to_their_mean_and_pruned_to_zero() -> None:
    weight = torch.tensor([1.0, 1.1, 0.0, 5.0, 5.2])
    shared = share_weights_(weight, bits=1)
    weight += torch.tensor([0.1, -0.3, 0.7, 0.0, 0.2])  # drift, and a pruned weight that moved
    snap_(weight, shared)
    torch.testing.assert_close(weight, torch.tensor([0.95, 0.95, 0.0, 5.2, 5.2]))
    weight += 1.0
    snap_(weight, shared, update_centroids=False)  # frozen centroids: back to the codebook
    torch.testing.assert_close(weight, torch.tensor([0.95, 0.95, 0.0, 5.2, 5.2]))


# ----------------------------------------------------------------------------------------------- callback
def _data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x @ torch.randn(16, 3, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


def _module(lr: float = 0.01) -> ClassificationModule:
    seed_everything(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-4)
    return ClassificationModule(model, num_classes=3, optimizer=optimizer)


def _trainer(callbacks: list[Callback], max_epochs: int, **kw: Any) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _accuracy(module: ClassificationModule, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float((module(x).argmax(dim=1) == y).float().mean())


class _PruneHalfOfFirstLayerAt(Callback):
    """Stands in for a pruning callback that ends at ``epoch``: zeroes the smaller half of the first layer.

    Also records the accuracy just before, i.e. of the dense model that is then pruned and shared.
    """

    def __init__(self, epoch: int, data: TensorDataset) -> None:
        self.epoch, self.data = epoch, data
        self.accuracy_before = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            self.accuracy_before = _accuracy(pl_module, self.data)
            weight = _linear(pl_module, "0").weight
            with torch.no_grad():
                weight[weight.abs() <= weight.abs().median()] = 0.0


def test_fit_keeps_shared_values_and_pruned_zeros_and_accuracy() -> None:
    data = _data()
    module = _module(lr=0.1)  # SGD with momentum 0.9 and weight decay 1e-4
    pruning = _PruneHalfOfFirstLayerAt(3, data)
    sharing = WeightSharing(bits={"Linear": 3}, start_epoch=3)
    trainer = _trainer([pruning, sharing], max_epochs=7)
    trainer.fit(module, DataLoader(data, batch_size=32))  # 8 steps an epoch: 32 steps after the clustering
    first = _linear(module, "0").weight
    pruned = sharing.codebooks()["0.weight"][1] == PRUNED
    assert pruned.float().mean() >= 0.5 and torch.all(first[pruned] == 0)
    for name in ("0", "2"):
        assert _distinct_nonzero(_linear(module, name).weight) <= 8, name
    assert pruning.accuracy_before > 0.9
    assert _accuracy(module, data) > pruning.accuracy_before - 0.05


def test_logs_bits_and_clusters() -> None:
    module = _module()
    sharing = WeightSharing(bits=2)
    trainer = _trainer([sharing], max_epochs=1, limit_train_batches=2)
    trainer.fit(module, DataLoader(_data(64), batch_size=16))
    assert float(trainer.callback_metrics["compress/weight_sharing_bits"]) == 2.0
    assert float(trainer.callback_metrics["compress/0/clusters"]) <= 4
    assert float(trainer.callback_metrics["compress/2/clusters"]) <= 4


@pytest.mark.parametrize("finetune", [True, False])
def test_finetune_false_keeps_centroids_fixed(finetune: bool) -> None:
    module = _module()
    reference = copy.deepcopy(module.model)
    expected = {f"{n}.weight": share_weights_(_linear(reference, n).weight, 3) for n in ("0", "2")}
    bias_before = _linear(module, "2").bias.detach().clone()
    sharing = WeightSharing(bits=3, finetune=finetune)
    _trainer([sharing], max_epochs=2, limit_train_batches=4).fit(module, DataLoader(_data(), batch_size=16))
    books = sharing.codebooks()
    for name, shared in expected.items():
        assert torch.equal(books[name][1], shared.assignments)
        assert torch.equal(books[name][0], shared.centroids) is not finetune
        assert torch.equal(module.model.state_dict()[name], shared.decode()) is not finetune
    assert not torch.equal(_linear(module, "2").bias, bias_before)  # the rest still trains


def test_codebooks_shapes_match_the_state_dict_and_feed_the_export(tmp_path: Path) -> None:
    model = create("lenet300", num_classes=3, input_shape=(16,))
    module = ClassificationModule(model, num_classes=3, optimizer=partial(torch.optim.SGD, lr=0.001))
    with torch.no_grad():
        _linear(model, "fc1").weight[:, ::3] = 0.0  # pruned: PRUNED in the assignments, zero in the file
    sharing = WeightSharing(bits={"Linear": 4}, exclude="fc3")
    assert sharing.codebooks() == {}
    _trainer([sharing], max_epochs=1, limit_train_batches=1).fit(module, DataLoader(_data(32), batch_size=16))
    books = sharing.codebooks()
    state = model.state_dict()
    assert sorted(books) == ["fc1.weight", "fc2.weight"]
    assert torch.equal(
        books["fc1.weight"][1][:, ::3], torch.full_like(books["fc1.weight"][1][:, ::3], PRUNED)
    )
    for name, (centroids, assignments) in books.items():
        assert centroids.shape == (16,) and assignments.dtype == torch.int64
        assert assignments.shape == state[name].shape
        kept = assignments != PRUNED
        assert torch.equal(centroids[assignments[kept]], state[name][kept])
        assert torch.all(state[name][~kept] == 0)
    path = tmp_path / "lenet300.deepc"
    save_deep_compressed(model, path, codebooks=books)
    loaded = load_deep_compressed(path)
    assert all(torch.equal(loaded[name], value) for name, value in state.items())


def test_state_dict_round_trip_and_continue() -> None:
    module = _module()
    loader = DataLoader(_data(), batch_size=16)
    sharing = WeightSharing(bits=3)
    _trainer([sharing], max_epochs=1, limit_train_batches=4).fit(module, loader)
    state = sharing.state_dict()
    buffer = io.BytesIO()  # the state survives a weights_only save/load
    torch.save(state, buffer)
    buffer.seek(0)
    restored = WeightSharing(bits=3)
    assert restored.state_key == sharing.state_key != WeightSharing(bits=3, include="2").state_key
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, (centroids, assignments) in sharing.codebooks().items():
        assert torch.equal(restored.codebooks()[name][0], centroids)
        assert torch.equal(restored.codebooks()[name][1], assignments)
    # continue on a fresh model: the restored codebooks are written into it, not re-clustered
    fresh = _module()
    with torch.no_grad():
        _linear(fresh, "0").weight.add_(1.0)
    _trainer([restored], max_epochs=1, limit_train_batches=4).fit(fresh, loader)
    for name, (_, assignments) in sharing.codebooks().items():
        assert torch.equal(restored.codebooks()[name][1], assignments)
        weight = fresh.model.state_dict()[name]
        assert _distinct_nonzero(weight) <= 8
        assert torch.equal(restored.codebooks()[name][0][assignments], weight)


def test_fit_resumed_from_checkpoint_ends_like_an_uninterrupted_fit(tmp_path: Path) -> None:
    loader = DataLoader(_data(64), batch_size=16)
    straight = _module()
    straight_sharing = WeightSharing(bits=3, start_epoch=1)
    _trainer([straight_sharing], max_epochs=4).fit(straight, loader)

    first = _module()  # stops after epoch 1, the one that clustered
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer([WeightSharing(bits=3, start_epoch=1), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        first, loader
    )
    resumed = _module()
    sharing = WeightSharing(bits=3, start_epoch=1)
    _trainer([sharing], max_epochs=4).fit(resumed, loader, ckpt_path=str(tmp_path / "last.ckpt"))
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, atol=0, rtol=0)
    for name, (centroids, assignments) in straight_sharing.codebooks().items():
        assert torch.equal(sharing.codebooks()[name][0], centroids)
        assert torch.equal(sharing.codebooks()[name][1], assignments)


def test_refuses_bad_arguments() -> None:
    with pytest.raises(MisconfigurationException, match=r"`bits` must be an int in \[1, 16\] .*got 0"):
        WeightSharing(bits=0)
    with pytest.raises(MisconfigurationException, match=r"`bits` must be an int in \[1, 16\] .*got 17"):
        WeightSharing(bits=17)
    with pytest.raises(
        MisconfigurationException, match=r"unknown layer type 'Conv'; known types: \[.*'Conv2d'"
    ):
        WeightSharing(bits={"Conv": 8})
    with pytest.raises(
        MisconfigurationException, match=r"`bits\['Linear'\]` must be an int in \[1, 16\], got 0"
    ):
        WeightSharing(bits={"Linear": 0})
    with pytest.raises(MisconfigurationException, match=r"`bits` as a dict needs at least one layer type"):
        WeightSharing(bits={})
    with pytest.raises(MisconfigurationException, match=r"`init` must be one of .*'linear'.*got 'kmeans'"):
        WeightSharing(init="kmeans")
    with pytest.raises(MisconfigurationException, match=r"`start_epoch` must be an int >= 0, got -1"):
        WeightSharing(start_epoch=-1)


def test_selection_errors_at_fit() -> None:
    loader = DataLoader(_data(32), batch_size=16)
    with pytest.raises(MisconfigurationException, match=r"include pattern 'fc\*' matches no layer"):
        _trainer([WeightSharing(include="fc*")], max_epochs=1).fit(_module(), loader)
    module = _module()
    torch.nn.utils.prune.l1_unstructured(_linear(module, "0"), "weight", amount=0.5)
    with pytest.raises(MisconfigurationException, match=r"the weight of layer '0' is not a parameter"):
        _trainer([WeightSharing()], max_epochs=1).fit(module, loader)


def test_config_builds_the_callback() -> None:
    cfg = OmegaConf.load(CONF)
    node = cfg.weight_sharing
    assert node._target_ == "effdl_lightning.callbacks.WeightSharing"
    sharing = WeightSharing(**{k: v for k, v in node.items() if k != "_target_"})  # type: ignore[arg-type]
    assert sharing.bits == {"Conv1d": 8, "Conv2d": 8, "Linear": 5} and sharing.init == "linear"


def test_mean_reduction_divides_each_cluster_sum_by_its_size() -> None:
    from effdl_lightning.core.weight_sharing import cluster_gradient_ as cg
    from effdl_lightning.core.weight_sharing import share_weights_ as sw

    weight = torch.nn.Parameter(torch.tensor([1.0, 1.1, 5.0, 0.0]))
    shared = sw(weight.data, bits=1)
    weight.grad = torch.tensor([1.0, 2.0, 4.0, 8.0])
    sums = cg(weight, shared, "mean")
    assert sums is not None and sums.tolist() == [1.5, 4.0]
    assert weight.grad.tolist() == [1.5, 1.5, 4.0, 0.0]
    with pytest.raises(ValueError, match=r"reduction must be one of \('sum', 'mean'\), got 'max'"):
        cg(weight, shared, "max")


def test_unknown_gradient_reduction_is_refused() -> None:
    with pytest.raises(
        MisconfigurationException, match=r"`gradient` must be one of \('sum', 'mean'\), got 'max'"
    ):
        WeightSharing(gradient="max")
