"""DARTS (arXiv 1806.09055): mixed ops, the architect's gradients, genotypes, the retrain network, the search
module (logging, files, resume), the configs and the benchmark's quick run."""

from __future__ import annotations

import json
import math
import random
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.core.nas import (
    DARTS_OPS,
    DARTS_V2,
    DartsSearchNetwork,
    Genotype,
    MixedOp,
    derive_genotype,
    first_order_arch_grad_,
    num_edges,
    random_genotype,
    second_order_arch_grad_,
)
from effdl_lightning.models import DartsNetwork, create
from effdl_lightning.modules import DartsSearchModule
from effdl_lightning.run import build, run

from .conftest import ComposeFn

SHAPE = (1, 8, 8)
OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def search_net(seed: int = 0, **kwargs: Any) -> DartsSearchNetwork:
    torch.manual_seed(seed)
    options: dict[str, Any] = {
        "C": 2,
        "num_classes": 4,
        "layers": 3,
        "nodes": 2,
        "ops": OPS,
        "in_channels": 1,
    }
    options.update(kwargs)
    return DartsSearchNetwork(**options)


def data(n: int = 48, batch_size: int = 16, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(max_epochs: int = 1, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return Trainer(**options)


def search_module(tmp_path: Path, seed: int = 0, **kwargs: Any) -> DartsSearchModule:
    options: dict[str, Any] = {
        "num_classes": 4,
        "input_shape": SHAPE,
        "optimizer": partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=3e-4),
        "scheduler": partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=3, eta_min=1e-3),
        "genotype_path": tmp_path / "genotype.json",
    }
    options.update(kwargs)
    return DartsSearchModule(search_net(seed), **options)


# --- mixed operations -----------------------------------------------------------------------------------------
def test_mixed_op_weights_are_a_softmax_and_the_output_is_their_weighted_sum() -> None:
    net = search_net(ops=DARTS_OPS, nodes=3)
    with torch.no_grad():
        net.alpha_normal.normal_(0, 2)
    w_normal, w_reduce = net.arch_weights()
    assert w_normal.shape == (num_edges(3), len(DARTS_OPS)) == (9, 8)
    torch.testing.assert_close(w_normal, torch.softmax(net.alpha_normal, -1), rtol=0, atol=0)
    torch.testing.assert_close(w_normal.sum(-1), torch.ones(9), rtol=0, atol=1e-6)
    assert (w_normal > 0).all() and (w_reduce > 0).all()

    torch.manual_seed(0)
    for stride in (1, 2):
        mixed = MixedOp(3, stride, DARTS_OPS).eval()
        x = torch.randn(2, 3, 7, 7)
        weights = torch.softmax(torch.randn(len(DARTS_OPS)), -1)
        by_hand = sum(
            weights[k] * (mixed.ops[name](x) if name != "none" else 0.0) for k, name in enumerate(DARTS_OPS)
        )
        out = mixed(x, weights)
        assert out.shape == ((2, 3, 4, 4) if stride == 2 else (2, 3, 7, 7))
        torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-6)
    # only one op weighted: the output is that op alone
    one_hot = torch.zeros(len(DARTS_OPS))
    one_hot[DARTS_OPS.index("skip_connect")] = 1.0
    torch.testing.assert_close(MixedOp(3, 1, DARTS_OPS)(x, one_hot), x, rtol=0, atol=0)


def test_search_network_takes_any_channels_and_size_and_separates_alpha_from_weights() -> None:
    for shape in ((1, 28, 28), (3, 7, 9), (2, 8, 8)):
        net = search_net(in_channels=shape[0], ops=DARTS_OPS)
        assert net(torch.randn(2, *shape)).shape == (2, 4)
    net = search_net()
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert [p.shape for p in arch] == [(5, 4), (5, 4)]
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert [c.reduction for c in net.cells] == [False, True, True]  # layers 3: reductions at 1 and 2
    assert [c.reduction for c in search_net(layers=8).cells].count(True) == 2


# --- the architect --------------------------------------------------------------------------------------------
def _tiny_problem() -> tuple[DartsSearchNetwork, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    net = search_net(seed=1, C=2, num_classes=3, ops=("none", "skip_connect", "sep_conv_3x3")).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 0.5)
    g = torch.Generator().manual_seed(3)
    x_t, x_v = torch.randn(6, 1, 6, 6, generator=g).double(), torch.randn(6, 1, 6, 6, generator=g).double()
    y_t, y_v = torch.randint(0, 3, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)
    return net, (x_t, y_t), (x_v, y_v)


def test_first_order_gradient_is_the_gradient_of_the_validation_loss() -> None:
    net, _, val = _tiny_problem()
    weights_before = [p.detach().clone() for p in net.weight_parameters()]
    running_before = [b.clone() for b in net.buffers()]
    loss = first_order_arch_grad_(net, F.cross_entropy, val)
    ref, _, _ = _tiny_problem()
    ref_loss = F.cross_entropy(ref(val[0]), val[1])
    expected = torch.autograd.grad(ref_loss, ref.arch_parameters())
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    for p, g in zip(net.arch_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in net.weight_parameters())  # weights and their .grad untouched
    assert all(torch.equal(a, b) for a, b in zip(weights_before, net.weight_parameters(), strict=True))
    # a plain forward moves the BN statistics; the architect's does not
    assert not all(torch.equal(a, b) for a, b in zip(running_before, ref.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(running_before, net.buffers(), strict=True))


def test_second_order_gradient_matches_finite_differences_of_the_unrolled_validation_loss() -> None:
    net, train, val = _tiny_problem()
    xi, mu, wd = 0.5, 0.9, 1e-2
    names = [n for n, _ in net.named_weight_parameters()]
    weights = net.weight_parameters()
    opt = torch.optim.SGD(weights, lr=xi, momentum=mu, weight_decay=wd)
    g = torch.Generator().manual_seed(5)
    for p in weights:  # a non-zero momentum buffer, as after some steps
        opt.state[p]["momentum_buffer"] = 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype)
    # the paper's ε = 0.01/‖v‖ is for real networks; on a 6×6 toy a step that large crosses ReLU/max-pool kinks,
    # which a finite difference of gradients does not forgive: check the formula with a small radius
    second_order_arch_grad_(net, F.cross_entropy, train, val, xi, optimizer=opt, radius=1e-7)
    analytic = [p.grad.clone() for p in net.arch_parameters()]  # type: ignore[union-attr]

    def unrolled_val_loss() -> float:
        """L_val(w − ξ(μ m + ∇_w L_train(w, α) + λ w), α) computed from scratch."""
        grads = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights)
        w1 = {
            n: (p - xi * (gr + wd * p + mu * opt.state[p]["momentum_buffer"])).detach()
            for n, p, gr in zip(names, weights, grads, strict=True)
        }
        out = functional_call(net, w1, (val[0],), strict=False)
        return F.cross_entropy(out, val[1]).item()

    h = 1e-6
    numeric = []
    for alpha in net.arch_parameters():
        grad = torch.zeros_like(alpha)
        for i in range(alpha.numel()):
            with torch.no_grad():
                alpha.view(-1)[i] += h
            up = unrolled_val_loss()
            with torch.no_grad():
                alpha.view(-1)[i] -= 2 * h
            down = unrolled_val_loss()
            with torch.no_grad():
                alpha.view(-1)[i] += h
            grad.view(-1)[i] = (up - down) / (2 * h)
        numeric.append(grad)
    for a, n in zip(analytic, numeric, strict=True):
        torch.testing.assert_close(a, n, rtol=1e-3, atol=1e-6)
    # the Hessian term matters here: ∇_α L_val(w', α) alone is far from the total derivative
    grads = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights)
    w1 = {
        n: (p - xi * (gr + wd * p + mu * opt.state[p]["momentum_buffer"])).detach()
        for n, p, gr in zip(names, weights, grads, strict=True)
    }
    out = functional_call(net, w1, (val[0],), strict=False)
    direct = torch.autograd.grad(F.cross_entropy(out, val[1]), net.arch_parameters())
    assert max((d - n).abs().max().item() for d, n in zip(direct, numeric, strict=True)) > 1e-3
    second_order_arch_grad_(net, F.cross_entropy, train, val, 0.0, optimizer=opt)  # ξ = 0: first order
    first_order = [p.grad.clone() for p in net.arch_parameters()]  # type: ignore[union-attr]
    first_order_arch_grad_(net, F.cross_entropy, val)
    for a, b in zip(first_order, net.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b.grad, rtol=0, atol=1e-12)
    gap = max((a - n).abs().max().item() for a, n in zip(first_order, numeric, strict=True))
    assert gap > 1e-3, gap


# --- genotypes ------------------------------------------------------------------------------------------------
def test_genotype_keeps_the_top_two_incoming_edges_with_their_strongest_op_never_none() -> None:
    ops = DARTS_OPS
    alpha = torch.zeros(num_edges(3), len(ops))
    alpha[:, ops.index("none")] = 10.0  # none dominates every edge: still never chosen
    # node 0 (edges 0, 1): both kept; node 1 (edges 2-4): states 2 and 0; node 2 (edges 5-8): states 3 and 1
    strong = {0: "sep_conv_3x3", 1: "max_pool_3x3", 2: "dil_conv_5x5", 4: "skip_connect", 6: "avg_pool_3x3",
              8: "sep_conv_5x5"}  # fmt: skip
    levels = {0: 3.0, 1: 2.0, 2: 4.0, 4: 5.0, 6: 1.5, 8: 2.5}
    for edge, op in strong.items():
        alpha[edge, ops.index(op)] = levels[edge]
    alpha[3, ops.index("dil_conv_3x3")] = 0.5  # weaker than edges 2 and 4
    alpha[7, ops.index("max_pool_3x3")] = 0.1
    genotype = derive_genotype([alpha, alpha.flip(0)], ops)
    assert genotype.normal == [
        ("sep_conv_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("dil_conv_5x5", 0),
        ("sep_conv_5x5", 3),
        ("avg_pool_3x3", 1),
    ]
    assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4]
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    # a search network's genotype is derived the same way from its α
    net = search_net(nodes=3, ops=ops)
    with torch.no_grad():
        net.alpha_normal.copy_(alpha)
    assert net.genotype().normal == genotype.normal


def test_random_genotypes_are_valid_seeded_and_cover_the_space() -> None:
    assert random_genotype(0, 4, OPS) == random_genotype(random.Random(0), 4, OPS)  # a seed or a Random
    assert random_genotype(0, 4, OPS) != random_genotype(1, 4, OPS)
    draws = [random_genotype(random.Random(s), 3, DARTS_OPS) for s in range(200)]
    ops_seen = {op for g in draws for op, _ in g.normal + g.reduce}
    assert ops_seen == set(DARTS_OPS) - {"none"}
    for g in draws:
        for i in range(3):
            (_, a), (_, b) = g.normal[2 * i : 2 * i + 2]
            assert a != b and 0 <= a < i + 2 and 0 <= b < i + 2
    pairs = {tuple(src for _, src in g.normal[4:6]) for g in draws}
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}  # every pair of inputs of node 2


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_genotype_round_trips_through_files_and_dicts(tmp_path: Path, suffix: str) -> None:
    genotype = random_genotype(7, 4)
    path = genotype.save(tmp_path / "sub" / f"cell{suffix}")
    assert Genotype.load(path) == genotype
    assert Genotype.from_dict(json.loads(json.dumps(genotype.to_dict()))) == genotype
    assert DartsNetwork(path, C=4, layers=3, in_channels=1).genotype == genotype
    assert DartsNetwork(genotype.to_dict(), C=4, layers=3, in_channels=1).genotype == genotype


def test_a_network_built_from_a_genotype_trains() -> None:
    torch.manual_seed(0)
    net = DartsNetwork(random_genotype(1, 3), C=4, num_classes=4, layers=3, in_channels=1, drop_path_prob=0.2)
    x, y = next(iter(data(n=64, batch_size=64)))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    # the auxiliary head: two outputs (for EarlyExitModule), in training and evaluation
    aux = DartsNetwork(DARTS_V2, C=4, num_classes=4, layers=3, in_channels=1, auxiliary=True)
    for mode in (True, False):
        out = aux.train(mode)(x[:2])
        assert isinstance(out, list) and [o.shape for o in out] == [(2, 4), (2, 4)]
    assert create("darts_genotype", num_classes=3, input_shape=(2, 9, 9), C=4, layers=3)(
        torch.randn(2, 2, 9, 9)
    ).shape == (2, 3)


def test_train_py_retrains_a_genotype_file(tmp_path: Path, compose_cfg: ComposeFn) -> None:
    genotype = random_genotype(3, 3)
    path = genotype.save(tmp_path / "found.json")
    overrides = [
        "model=darts_genotype",
        f"model.genotype={path}",
        "model.C=4",
        "model.layers=3",
        "data=digits",
        "trainer.fast_dev_run=true",
        "callbacks.progress_bar=null",
    ]
    cfg = compose_cfg(overrides)
    _, module, _ = build(cfg)
    assert isinstance(module.model, DartsNetwork) and module.model.genotype == genotype
    metrics = run(compose_cfg(overrides))
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["compress/macs"] > 0


# --- the search module ----------------------------------------------------------------------------------------
def test_search_module_updates_both_sets_logs_and_writes_a_loadable_genotype(tmp_path: Path) -> None:
    module = search_module(tmp_path, arch_lr=0.05)
    alpha0 = [p.detach().clone() for p in module.arch_parameters()]
    p0 = torch.softmax(alpha0[0], -1)
    entropy0 = -(p0 * p0.log()).sum(-1).mean()
    w0 = [p.detach().clone() for p in module.weight_parameters()]
    w_opt, a_opt = module.configure_optimizers()[0]
    assert {id(p) for g in a_opt.param_groups for p in g["params"]} == {
        id(p) for p in module.arch_parameters()
    }
    assert {id(p) for g in w_opt.param_groups for p in g["params"]} == {
        id(p) for p in module.weight_parameters()
    }
    fit = trainer(2, default_root_dir=tmp_path)
    fit.fit(module, data(), data(seed=1))
    m = fit.callback_metrics
    for key in ("train/loss", "train/acc", "search/arch_loss", "search/entropy_normal", "search/entropy_reduce",
                "val/acc", "val/loss"):  # fmt: skip
        assert key in m, key
    # α moved away from uniform mixing: the edges' softmax entropy fell below its initial value (≈ log 4)
    assert float(entropy0) == pytest.approx(math.log(len(OPS)), abs=1e-4)
    assert float(m["search/entropy_normal"]) < float(entropy0) - 1e-3
    assert all(not torch.equal(a, p) for a, p in zip(alpha0, module.arch_parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(w0, module.weight_parameters(), strict=True))
    saved = Genotype.load(tmp_path / "genotype.json")
    assert saved == module.genotype == module.model.genotype()  # type: ignore[operator]
    net = instantiate(OmegaConf.load(tmp_path / "genotype_model.yaml"))
    assert isinstance(net, DartsNetwork) and net.genotype == saved
    assert net(torch.randn(2, *SHAPE)).shape == (2, 4)
    # one epoch = 3 batches of 8 + 8 samples; Lightning counts both optimizers' steps
    assert fit.global_step == 2 * 2 * 3


@pytest.mark.parametrize("order", ["first", "second"])
def test_resuming_a_search_from_a_mid_fit_checkpoint_ends_like_an_uninterrupted_one(
    tmp_path: Path, order: str
) -> None:
    train, val = data(n=32), data(n=16, seed=1)
    straight = search_module(tmp_path / "a", order=order)
    trainer(2).fit(straight, train, val)
    first = search_module(tmp_path / "b", order=order)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(1, callbacks=[ckpt], enable_checkpointing=True).fit(first, train, val)
    resumed = search_module(tmp_path / "c", order=order)
    trainer(2).fit(resumed, train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # weights, α and BN statistics; they depend on both optimizers' states and on the learning-rate schedule
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert resumed.lr_schedulers().last_epoch == straight.lr_schedulers().last_epoch == 1  # type: ignore[union-attr]
    assert resumed.genotype == straight.genotype


def test_bad_arguments_are_refused_with_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown DARTS operation\(s\) \['conv_7x7'\]; allowed: \['none', "):
        search_net(ops=["none", "conv_7x7"])
    with pytest.raises(ValueError, match=r"needs at least one operation besides 'none', got \['none'\]"):
        search_net(ops=["none"])
    with pytest.raises(ValueError, match=r"`nodes` must be >= 2, got 1"):
        search_net(nodes=1)
    with pytest.raises(ValueError, match=r"`nodes` must be >= 2, got 1"):
        random_genotype(0, 1)
    with pytest.raises(ValueError, match=r"`order` must be one of \('first', 'second'\), got 'third'"):
        search_module(tmp_path, order="third")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(
            ValueError, match=rf"`val_fraction` must be in the open interval \(0, 1\), got {bad}"
        ):
            search_module(tmp_path, val_fraction=bad)
    with pytest.raises(ValueError, match=r"`arch_lr` must be > 0, got 0"):
        search_module(tmp_path, arch_lr=0)
    with pytest.raises(ValueError, match=r"`arch_betas` must be two numbers in \[0, 1\), got \[0.5, 1.0\]"):
        search_module(tmp_path, arch_betas=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"`xi` must be >= 0 or None \(the weights' learning rate\), got -1"):
        search_module(tmp_path, xi=-1)
    with pytest.raises(ValueError, match=r"`grad_clip` must be >= 0 or None \(off\), got -5"):
        search_module(tmp_path, grad_clip=-5)
    with pytest.raises(
        TypeError, match=r"must be a DARTS search network .* Linear has no arch_parameters\(\)"
    ):
        DartsSearchModule(nn.Linear(2, 2), num_classes=2)
    with pytest.raises(ValueError, match=r"DARTS splits each training batch in two; got a batch of 1 sample"):
        search_module(tmp_path).split_batch((torch.zeros(1, *SHAPE), torch.zeros(1)))
    with pytest.raises(
        ValueError, match=r"`normal` edge 2 feeds node 1, whose inputs are states 0..2; got 3"
    ):
        Genotype.from_dict({"normal": [["skip_connect", 0]] * 2 + [["skip_connect", 3]] * 2, "reduce": []})
    with pytest.raises(ValueError, match=r"`reduce` edge 0: unknown operation 'conv'; allowed: \['none'"):
        Genotype.from_dict({"normal": [["skip_connect", 0]] * 2, "reduce": [["conv", 0]] * 2})
    with pytest.raises(ValueError, match=r"unknown genotype key\(s\) \['nodes'\]"):
        Genotype.from_dict({"normal": [], "reduce": [], "nodes": 2})
    with pytest.raises(ValueError, match=r"genotype files are .json, .yaml or .yml; got 'g.txt'"):
        DARTS_V2.save(tmp_path / "g.txt")
    with pytest.raises(FileNotFoundError, match=r"genotype file .*missing.json not found"):
        DartsNetwork(str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match=r"`genotype` must be a Genotype, a dict or the path"):
        DartsNetwork(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`drop_path_prob` must be in \[0, 1\), got 1"):
        DartsNetwork(drop_path_prob=1)


# --- configs and the benchmark --------------------------------------------------------------------------------
def test_module_config_selects_the_search_network(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg(["module=darts_search", "data=digits", "model.nodes=2", "model.layers=3"])
    _, module, _ = build(cfg)
    assert isinstance(module, DartsSearchModule) and isinstance(module.model, DartsSearchNetwork)
    assert module.genotype_file() == Path(cfg.paths.output_dir) / "genotype.json"
    assert module.model.in_channels == 1 and module.model.nodes == 2 and module.order == "first"
    w_opt, a_opt = module.configure_optimizers()[0]
    assert isinstance(w_opt, torch.optim.SGD) and w_opt.param_groups[0]["lr"] == 0.025
    assert isinstance(a_opt, torch.optim.Adam) and a_opt.param_groups[0]["betas"] == (0.5, 0.999)


def test_benchmark_quick_run_writes_its_results(tmp_path: Path) -> None:
    from benchmarks import darts_search as bench

    bench.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"darts_search_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "darts_search.json").exists()
    result = json.loads((tmp_path / "darts_search_quick.json").read_text())
    assert result["meta"]["quick"] and result["meta"]["seeds"] == [0]
    arms = {r["arm"] for r in result["runs"]}
    assert arms == {"darts", "random"}
    for r in result["runs"]:
        assert (
            0.0 <= r["retrain"]["test_acc"] <= 1.0 and r["retrain"]["params"] > 0 and r["retrain"]["macs"] > 0
        )
        Genotype.from_dict(r["genotype"])
    darts_run, random_run = sorted(result["runs"], key=lambda r: r["arm"])
    assert darts_run["search"]["train_batches"] == random_run["search"]["train_batches"]  # equal budget
    md = (tmp_path / "darts_search_quick.md").read_text()
    assert "Reproduce" in md and "load average" in md
