"""SkipNet gates: hard forward + straight-through gradient, real skipping at inference, REINFORCE, the module."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.core.dynamic import (
    GatedResidual,
    forced_gates,
    gate_,
    gated_blocks,
    macs_table,
    reinforce_loss,
    set_gate_mode_,
)
from effdl_lightning.measure import profile
from effdl_lightning.models import BasicBlock, ResNetCifar
from effdl_lightning.modules import SkipNetModule

SHAPE = (1, 8, 8)


def resnet(seed: int = 0) -> ResNetCifar:
    """ResNet-14 at width 0.25 (4/8/16 channels): 6 blocks, 4 of them keep their shape (gateable)."""
    torch.manual_seed(seed)
    return ResNetCifar(14, 4, SHAPE, width=0.25)


def data(n: int = 48, batch_size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(max_epochs: int = 1, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
    }
    options.update(kwargs)
    return Trainer(**options)


def skipnet(seed: int = 0, **kwargs: Any) -> SkipNetModule:
    model = resnet(seed)
    kwargs.setdefault("optimizer", partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    return SkipNetModule(model, num_classes=4, input_shape=SHAPE, **kwargs)


class Toy(nn.Module):
    """``act(conv(x) + shortcut(x))`` with custom attribute names and an identity activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.skip = nn.Identity()
        self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.skip(x))


# --- the gate: hard forward, straight-through backward -----------------------------------------------------------
def test_gate_is_hard_forward_and_straight_through_backward() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(Toy())
    gated = gate_(net, shortcut="skip", act="act", kind="linear", block_types=[Toy])
    block = gated["0"]
    assert isinstance(net[0], GatedResidual) and block.block.conv is not None
    x = torch.randn(6, 2, 5, 5)
    with torch.no_grad():
        block.gate.fc.weight.copy_(torch.tensor([[3.0, -2.0]]))
        block.gate.fc.bias.zero_()
    z = block.gate(x).detach()
    p = torch.sigmoid(z)
    hard = (p >= 0.5).float()
    assert 0 < hard.sum() < 6  # a mix of open and closed gates
    branch = block.block.conv(x).detach()
    out = net(x)  # training mode, "hard"
    expected = hard.view(6, 1, 1, 1) * branch + x
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.sum().backward()
    # dL/dz_n = σ'(z_n) · Σ F(x_n), with L = Σ out and identity activation
    dz = p * (1 - p) * branch.sum((1, 2, 3))
    gap = x.mean((2, 3))
    torch.testing.assert_close(block.gate.fc.bias.grad, dz.sum().view(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(block.gate.fc.weight.grad, (dz[:, None] * gap).sum(0, keepdim=True))


# --- inference skips for real -----------------------------------------------------------------------------------
def _samples_entering(module: nn.Module, log: list[int]) -> Any:
    return module.register_forward_pre_hook(lambda _m, args: log.append(int(args[0].shape[0])))


def test_skipped_blocks_are_not_computed_for_the_samples_that_skip_them() -> None:
    model = resnet()
    blocks = gate_(model, kind="linear")
    assert list(blocks) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    x = torch.randn(10, *SHAPE)
    model.eval()
    # record the inputs of layer1.1, then set its gate so that exactly 4 of the 10 samples execute it
    inputs: list[torch.Tensor] = []
    handle = blocks["layer1.1"].register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    gate = blocks["layer1.1"].gate
    with torch.no_grad():
        gate.fc.weight.normal_()
        z = gate(inputs[0])
        ordered = z.sort().values
        gate.fc.bias -= (ordered[5] + ordered[6]) / 2  # 4 logits > 0
        blocks["layer2.1"].gate.fc.bias.fill_(-10.0)  # always skipped
    entering: dict[str, list[int]] = {name: [] for name in blocks}
    handles = [_samples_entering(b.block.conv1, entering[n]) for n, b in blocks.items()]
    for b in blocks.values():
        b.reset_stats()
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    assert entering == {"layer1.0": [10], "layer1.1": [4], "layer2.1": [], "layer3.1": [10]}
    assert (blocks["layer1.1"].calls, blocks["layer1.1"].samples_in, blocks["layer1.1"].samples_seen) == (
        1,
        4,
        10,
    )
    assert (blocks["layer2.1"].calls, blocks["layer2.1"].samples_in) == (0, 0)
    assert blocks["layer1.1"].last_gate is not None and int(blocks["layer1.1"].last_gate.sum()) == 4
    # the same decisions computed densely (g·F(x) + x on the whole batch, BN in eval): same outputs
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        dense = model(x)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_with_all_gates_open_the_gated_model_equals_the_ungated_one() -> None:
    plain, gated = resnet(), resnet()
    gate_(gated)  # gates start open: σ(2) > 0.5 whatever the input
    x = torch.randn(8, *SHAPE)
    torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=1e-6)  # training mode (BN batch stats)
    plain.eval(), gated.eval()
    torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=1e-6)
    with forced_gates(gated, True):
        torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=1e-6)
    blocks = gated_blocks(gated).values()
    before = [b.samples_in for b in blocks]
    with forced_gates(gated, False):  # every gated block reduces to relu(x): only the downsampling blocks run
        closed = gated(x)
    assert [b.samples_in for b in blocks] == before and not torch.allclose(closed, plain(x))
    assert all(b.force is None for b in blocks)


def test_random_gate_init_starts_gates_near_a_half_and_some_closed() -> None:
    # the reference code's gates are not initialized open: PyTorch's default Linear init, logits near 0
    gated = resnet()
    torch.manual_seed(3)
    blocks = gate_(gated, init="random")
    probs: list[torch.Tensor] = []
    for block in blocks.values():
        fc = block.gate.fc
        bound = 1 / math.sqrt(fc.in_features)
        weight, bias = fc.weight.detach(), fc.bias.detach()
        assert bool((weight != 0).any()) and float(weight.abs().max()) <= bound
        assert float(bias.abs().max()) <= bound
        block.register_forward_pre_hook(lambda m, args: probs.append(torch.sigmoid(m.gate(args[0]))))
    with torch.no_grad():
        gated(torch.randn(16, *SHAPE))
    probs_all = torch.cat(probs)
    assert float(probs_all.min()) > 0.2 and float(probs_all.max()) < 0.8  # undecided gates, not open ones
    assert bool((probs_all < 0.5).any())  # some (block, sample) skipped from the first step
    open_ = gate_(resnet(), init="open")
    assert all(float(b.gate.fc.bias.detach()) == 2.0 and not b.gate.fc.weight.any() for b in open_.values())
    with pytest.raises(ValueError, match=r"gate init must be one of \('open', 'random'\); got 'closed'"):
        gate_(resnet(), init="closed")
    assert skipnet().gates["layer1.0"].gate.fc.weight.any()  # SkipNetModule's default: the reference's


def test_gate_selection_by_pattern_and_type_and_clear_errors(caplog: pytest.LogCaptureFixture) -> None:
    model = resnet()
    with caplog.at_level(logging.INFO, logger="effdl_lightning.core.dynamic.gating"):
        blocks = gate_(model, include=["layer1.*", "layer2.*"], exclude="layer1.1", block_types=[BasicBlock])
    assert list(blocks) == ["layer1.0", "layer2.1"]
    assert "layer2.0 kept always on: its shortcut is PadShortcut" in caplog.text
    assert gate_(model).keys() == {"layer1.1", "layer3.1"}  # already gated blocks are left alone
    with pytest.raises(ValueError, match=r"include pattern 'stage9\.\*' matches no residual block"):
        gate_(resnet(), include="stage9.*")
    with pytest.raises(ValueError, match=r"exclude pattern 'fc' matches no residual block"):
        gate_(resnet(), exclude=["fc"])
    with pytest.raises(ValueError, match=r"gate kind must be one of \('conv', 'linear'\); got 'rnn'"):
        gate_(resnet(), kind="rnn")
    with pytest.raises(ValueError, match=r"gate mode must be one of \('hard', 'sample'\); got 'soft'"):
        set_gate_mode_(model, "soft")
    with caplog.at_level(logging.WARNING):
        assert gate_(nn.Sequential(nn.Conv2d(1, 2, 3))) == {}
    assert "no residual block of Sequential was gated" in caplog.text


# --- hybrid RL --------------------------------------------------------------------------------------------------
def test_reinforce_loss_matches_a_hand_computation() -> None:
    lp = [torch.tensor([-0.2, -1.0], requires_grad=True), torch.tensor([-0.5, -0.1], requires_grad=True)]
    actions = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])]
    ce = torch.tensor([0.3, 2.0])
    alpha, gamma = 0.4, 0.9
    r = [[alpha / 2 * (1 - a) for a in act.tolist()] for act in actions]  # r[gate][sample]
    total = 0.0
    for n in range(2):
        g2 = r[1][n] + gamma * -ce[n].item()
        g1 = r[0][n] + gamma * g2
        total += g1 * lp[0][n].item() + g2 * lp[1][n].item()
    loss = reinforce_loss(lp, actions, ce, alpha, gamma)
    assert loss.item() == pytest.approx(-total / 2, rel=1e-6)
    loss.backward()
    assert lp[1].grad is not None and lp[1].grad[0].item() == pytest.approx(-(r[1][0] - gamma * 0.3) / 2)
    # sign: a skipped gate with no task loss is pushed further towards skipping (dL/dz = α·σ(z) > 0)
    z = torch.tensor([0.3], requires_grad=True)
    skip = torch.zeros(1)
    reinforce_loss([torch.nn.functional.logsigmoid(-z)], [skip], torch.zeros(1), alpha=1.0).backward()
    assert z.grad is not None and z.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(0.3)).item())
    with pytest.raises(ValueError, match="got 1 log-probabilities for 2 actions"):
        reinforce_loss(lp[:1], actions, ce, alpha)


def _gate_open_probability(module: SkipNetModule) -> float:
    x = next(iter(data()))[0]
    probs: list[torch.Tensor] = []
    hooks = [
        b.gate.register_forward_hook(lambda _m, _i, z: probs.append(torch.sigmoid(z)))
        for b in module.gates.values()
    ]
    module.eval()
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return float(torch.cat(probs).mean())


def test_a_higher_skip_reward_makes_the_gates_skip_more() -> None:
    probs = {}
    for alpha in (0.0, 20.0):
        module = skipnet(alpha=alpha, rl_start_epoch=0, gate="linear", gate_lr=0.5)
        trainer(2).fit(module, data())
        probs[alpha] = _gate_open_probability(module)
    assert probs[20.0] < probs[0.0] - 0.05, probs


# --- the LightningModule ----------------------------------------------------------------------------------------
def test_module_logs_skip_ratio_and_executed_macs_and_switches_to_hybrid() -> None:
    module = skipnet(alpha=0.1, rl_start_epoch=1, gate_init="open")  # open gates: profile runs every branch
    run = trainer(2, num_sanity_val_steps=0)
    run.fit(module, data(), data(seed=1))
    m = run.callback_metrics
    for key in ("train/loss", "train/acc", "train/rl_loss", "train/skip_ratio", "val/acc", "val/skip_ratio",
                "val/avg_macs", "train/avg_macs"):  # fmt: skip
        assert key in m, key
    assert float(m["train/hybrid"]) == 1.0 and 0.0 <= float(m["val/skip_ratio"]) <= 1.0
    table = macs_table(module.model, torch.zeros(1, *SHAPE))
    assert table.full == profile(module.model, SHAPE, latency=False).macs  # gates counted, as measure does
    assert table.static <= float(m["val/avg_macs"]) <= table.full
    # every gate closed: the ratio is 1 and only the static part runs
    for b in module.gates.values():
        torch.nn.init.constant_(b.gate.fc.bias, -50.0)
        torch.nn.init.zeros_(b.gate.fc.weight)
    (result,) = run.test(module, data(seed=2), verbose=False)
    assert result["test/skip_ratio"] == 1.0
    assert result["test/avg_macs"] == pytest.approx(table.static)
    assert result["test/avg_macs"] < table.full


def test_gate_learning_rate_is_its_own_parameter_group() -> None:
    module = skipnet(gate_lr=0.5)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and [g["lr"] for g in opt.param_groups] == [0.05, 0.5]
    gate_params = {id(p) for b in module.gates.values() for p in b.gate.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == gate_params
    assert len(skipnet().configure_optimizers().param_groups) == 1  # type: ignore[union-attr]


def test_resume_from_a_checkpoint_continues_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> SkipNetModule:
        return skipnet(alpha=0.1, rl_start_epoch=1, gate="linear")

    straight = make()
    trainer(3).fit(straight, data())
    first = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(1, callbacks=[ckpt], enable_checkpointing=True).fit(first, data())
    resumed = make()
    run = trainer(3)
    run.fit(resumed, data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert run.global_step == 3 * 3
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)


def test_bad_arguments_are_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"`alpha` must be >= 0, got -1"):
        skipnet(alpha=-1)
    with pytest.raises(
        ValueError, match=r"`rl_start_epoch` must be >= 0 or None \(supervised only\), got -2"
    ):
        skipnet(rl_start_epoch=-2)
    with pytest.raises(ValueError, match=r"`rl_weight` must be >= 0, got -0.5"):
        skipnet(rl_weight=-0.5)
    with pytest.raises(ValueError, match=r"`gamma` must be in \(0, 1\], got 0"):
        skipnet(gamma=0)
    with pytest.raises(ValueError, match=r"`gate` must be one of \('conv', 'linear'\), got 'lstm'"):
        skipnet(gate="lstm")
    with pytest.raises(ValueError, match=r"`gate_init` must be one of \('open', 'random'\), got 'closed'"):
        skipnet(gate_init="closed")
    with pytest.raises(ValueError, match=r"`gate_lr` must be > 0 or None \(the optimizer's\), got 0"):
        skipnet(gate_lr=0)
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module, got str"):
        SkipNetModule("resnet20", num_classes=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"include pattern 'blocks\.\*' matches no residual block"):
        skipnet(include=["blocks.*"])
    assert math.isfinite(skipnet().alpha)
