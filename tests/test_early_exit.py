"""Early exits (MSDNet, arXiv 1703.09844): exits by path, MACs, thresholds, real early exit, training, MSDNet."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from effdl_lightning.core.dynamic import (
    CompiledStages,
    ExitHead,
    MultiExitNetwork,
    assign_exits,
    budget_sweep,
    cumulative_exit_macs,
    early_exit_inference,
    fit_thresholds,
    geometric_exit_fractions,
)
from effdl_lightning.measure import profile
from effdl_lightning.models import MSDNet, ResNetCifar, VGGSmall
from effdl_lightning.modules import ClassificationModule, EarlyExitModule
from tests.structured_helpers import image_data

SHAPE = (1, 12, 12)


def resnet8(seed: int = 0) -> ResNetCifar:
    torch.manual_seed(seed)
    return ResNetCifar(depth=8, num_classes=4, input_shape=SHAPE, width=0.5)


def vgg(seed: int = 0) -> VGGSmall:
    torch.manual_seed(seed)
    return VGGSmall(num_classes=4, input_shape=SHAPE, widths=(8, "M", 16, "M"))


def tiny_msdnet(seed: int = 0, **kwargs: Any) -> MSDNet:
    torch.manual_seed(seed)
    options: dict[str, Any] = {"channels": 4, "growth": 2, "head_channels": 8, "step": 1}
    options.update(kwargs)
    return MSDNet(num_classes=4, input_shape=SHAPE, **options)


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
    }
    options.update(kwargs)
    return Trainer(**options)


def early_exit_module(seed: int = 0, **kwargs: Any) -> EarlyExitModule:
    options: dict[str, Any] = {
        "num_classes": 4,
        "exits": ["layer1", "layer2"],
        "input_shape": SHAPE,
        "optimizer": partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    }
    options.update(kwargs)
    model = options.pop("model", None)
    return EarlyExitModule(model if model is not None else resnet8(seed), **options)


# --- attaching exits ----------------------------------------------------------------------------------------------
def test_exits_attach_by_path_and_return_one_logits_per_exit() -> None:
    backbone = vgg()
    net = MultiExitNetwork(backbone, ["features.3", "features.6"], num_classes=4, input_shape=SHAPE)
    assert net.num_exits == 3 and [h.fc.in_features for h in net.heads] == [8, 16]
    x = torch.randn(5, *SHAPE)
    net.eval()
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(5, 4)] * 3
    torch.testing.assert_close(outs[-1], backbone(x), rtol=0, atol=0)  # the backbone's own output is last
    pooled = backbone.features[:4](x).mean(dim=(2, 3))  # exit 1 = pooling + linear on features.3's output
    torch.testing.assert_close(outs[0], net.heads[0].fc(pooled))
    assert net.stages() == [
        ["features.0", "features.1", "features.2", "features.3"],
        ["features.4", "features.5", "features.6"],
        ["features.7", "pool", "flatten", "dropout", "head"],
    ]
    nested = MultiExitNetwork(resnet8(), ["layer1.0", "layer2"], 4, SHAPE, head_channels=6)
    assert nested.stages()[0] == ["conv1", "bn1", "relu", "layer1.0"]
    assert isinstance(nested.heads[0].body[0], nn.Conv2d) and nested.heads[0].body[0].stride == (2, 2)


def test_a_wrong_exit_path_is_named_with_the_available_ones() -> None:
    wrong = r"no module 'layer9' in the backbone \(ResNetCifar\); close matches: \['layer.'.*"
    with pytest.raises(ValueError, match=wrong + r"available paths: conv1, bn1, relu, layer1, layer1.0"):
        MultiExitNetwork(resnet8(), ["layer9"], 4, SHAPE)
    with pytest.raises(ValueError, match=r"no module 'features.99' in the backbone \(VGGSmall\)"):
        early_exit_module(model=vgg(), exits=["features.99"])


@pytest.mark.parametrize(
    ("exits", "match"),
    [
        (["layer2", "layer1"], r"execution order \['layer1', 'layer2'\], got \['layer2', 'layer1'\]"),
        (["layer1", "layer1"], r"lists a path twice: \['layer1', 'layer1'\]"),
        (["layer1", "layer1.0"], r"must not be nested; 'layer1.0' is inside 'layer1'"),
        ([""], r"exit path '' is the whole backbone"),
        ([], r"non-empty list of module paths, got \[\]"),
        ("layer1", r"non-empty list of module paths, got 'layer1'"),
    ],
)
def test_bad_exit_lists_are_refused(exits: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiExitNetwork(resnet8(), exits, 4, SHAPE)


def test_an_exit_module_must_run_exactly_once_and_backbone_must_return_logits() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(144, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(self.block(x)).flatten(1))

    with pytest.raises(ValueError, match=r"exit module 'block' ran 2 times in one forward pass"):
        MultiExitNetwork(Twice(), ["block"], 4, SHAPE)
    with pytest.raises(
        ValueError, match=r"backbone returned list; expected logits \(batch, 4\).*`exits=None`"
    ):
        MultiExitNetwork(tiny_msdnet(), ["classifiers.0"], 4, SHAPE)
    with pytest.raises(
        TypeError, match=r"module 'first' \(_FirstLayer\) returned list; an exit needs a module that"
    ):
        MultiExitNetwork(tiny_msdnet(), ["first"], 4, SHAPE)


# --- MACs ---------------------------------------------------------------------------------------------------------
def test_cumulative_macs_increase_and_the_last_is_the_full_network_with_heads() -> None:
    backbone = resnet8()
    net = MultiExitNetwork(backbone, ["layer1", "layer2"], 4, SHAPE, head_channels=4)
    macs = cumulative_exit_macs(net, SHAPE)
    assert len(macs) == 3 and macs[0] < macs[1] < macs[2]
    layers = profile(backbone, SHAPE, latency=False).layers
    heads = [
        profile(h, (c, s, s), latency=False).macs for h, c, s in zip(net.heads, (8, 16), (12, 6), strict=True)
    ]
    upto_layer1 = sum(layer.macs for layer in layers if layer.name.startswith(("conv1", "layer1")))
    assert macs[0] == upto_layer1 + heads[0]
    assert macs[2] == profile(backbone, SHAPE, latency=False).macs + sum(heads)
    assert macs[2] == profile(net, SHAPE, latency=False).macs  # what CompressionReport counts
    staged = tiny_msdnet()
    msd = cumulative_exit_macs(staged, SHAPE)
    assert len(msd) == 3 and msd[0] < msd[1] < msd[2] == profile(staged, SHAPE, latency=False).macs


# --- thresholds ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fractions", [[0.3, 0.5, 0.2], [0.0, 0.25, 0.75], geometric_exit_fractions(3, 0.4)])
def test_fitted_thresholds_give_the_requested_exit_fractions(fractions: list[float]) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 101, 4) * 3  # (exits, samples, classes): continuous confidences, no ties
    thresholds = fit_thresholds(logits, fractions)
    counts = torch.bincount(assign_exits(logits, thresholds), minlength=3)
    for k in range(3):
        assert abs(int(counts[k]) - 101 * fractions[k]) <= 1, (k, counts.tolist())
    assert thresholds[0] == math.inf if fractions[0] == 0 else thresholds[0] <= 1


def test_geometric_budget_law_and_fraction_errors() -> None:
    q = geometric_exit_fractions(3, 0.5)
    assert q == pytest.approx([4 / 7, 2 / 7, 1 / 7])  # q_k ∝ p^k
    assert geometric_exit_fractions(2, 1.0) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=r"geometric budget parameter p must be > 0, got 0"):
        geometric_exit_fractions(3, 0)
    with pytest.raises(
        ValueError, match=r"exit fractions must be 3 values >= 0 that sum to 1 .* got \[0.5, 0.6, 0.0\]"
    ):
        fit_thresholds(torch.randn(3, 10, 4), [0.5, 0.6, 0.0])
    with pytest.raises(ValueError, match=r"\(exits, samples, classes\), got \(10, 4\)"):
        fit_thresholds(torch.randn(10, 4), [1.0])
    with pytest.raises(ValueError, match=r"`thresholds` must hold 2 values .* got 1: \[0.5\]"):
        assign_exits(torch.randn(3, 10, 4), [0.5])
    with pytest.raises(ValueError, match=r"validation logits have 3 exits, test logits 2 and macs 3"):
        budget_sweep(
            (torch.randn(3, 5, 4), torch.zeros(5)), (torch.randn(2, 5, 4), torch.zeros(5)), [1, 2, 3]
        )


# --- early-exit inference -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build",
    [
        lambda: MultiExitNetwork(resnet8(), ["layer1", "layer2.0"], 4, SHAPE),
        lambda: MultiExitNetwork(vgg(), ["features.3"], 4, SHAPE, head_channels=4),
        tiny_msdnet,
    ],
)
def test_thresholds_above_one_give_exactly_the_full_network(build: Any) -> None:
    net = build().eval()
    x = torch.randn(9, *SHAPE)
    with torch.no_grad():
        full = net(x)[-1]
    out = early_exit_inference(net, x, 1.5)
    assert torch.equal(out.predictions, full.argmax(dim=1))
    torch.testing.assert_close(out.logits, full, rtol=0, atol=0)
    assert out.exit_index.tolist() == [net.num_exits - 1] * 9 and out.stage_batch_sizes == [9] * net.num_exits


@pytest.mark.parametrize("kind", ["resnet", "msdnet"])
def test_exited_samples_are_not_computed_by_later_stages(kind: str) -> None:
    if kind == "resnet":
        net: nn.Module = MultiExitNetwork(resnet8(), ["layer1", "layer2"], 4, SHAPE).eval()
        later = [net.backbone.layer2, net.backbone.layer3]
    else:
        net = tiny_msdnet().eval()
        later = [net.blocks[1], net.blocks[2]]
    x = torch.randn(20, *SHAPE)
    with torch.no_grad():
        full = net(x)
    conf = [torch.softmax(z, dim=1).amax(dim=1) for z in full]
    thresholds = [float(conf[0].median()), float(conf[1].median())]  # about half leave at each exit
    seen: list[int] = []

    def count(module: nn.Module, args: tuple[Any, ...]) -> None:
        state = args[0]  # a tensor, or MSDNet's list of per-scale features
        seen.append((state if isinstance(state, torch.Tensor) else state[0]).shape[0])

    handles = [m.register_forward_pre_hook(count) for m in later]
    out = early_exit_inference(net, x, thresholds)
    for handle in handles:
        handle.remove()
    leave0 = conf[0] >= thresholds[0]
    leave1 = ~leave0 & (conf[1] >= thresholds[1])
    assert seen == [int((~leave0).sum()), int((~leave0 & ~leave1).sum())] == out.stage_batch_sizes[1:]
    assert 0 < seen[1] < seen[0] < 20
    expected = torch.where(leave0, 0, torch.where(leave1, 1, 2))
    assert torch.equal(out.exit_index, expected)
    for k in range(3):
        rows = expected == k
        torch.testing.assert_close(out.logits[rows], full[k][rows], rtol=1e-5, atol=1e-5)


def test_compiled_stages_give_the_eager_early_exit_for_every_batch_size() -> None:
    # backend="eager": dynamo traces each stage with a symbolic batch size (what matters here) without codegen;
    # the dynamic-inference benchmark checks inductor-compiled MSDNet stages against eager on every batch
    net = MultiExitNetwork(resnet8(), ["layer1", "layer2"], 4, SHAPE).eval()
    staged = CompiledStages(net, backend="eager")
    assert staged.num_exits == 3
    torch._dynamo.reset()
    for n in (20, 7):
        x = torch.randn(n, *SHAPE)
        with torch.no_grad():
            conf = [torch.softmax(z, dim=1).amax(dim=1) for z in net(x)]
        thresholds = [float(conf[0].median()), float(conf[1].median())]
        want = early_exit_inference(net, x, thresholds)
        got = early_exit_inference(staged, x, thresholds)
        assert torch.equal(got.exit_index, want.exit_index)
        assert got.stage_batch_sizes == want.stage_batch_sizes
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    # static buckets: padded up to the next bucket, cut back; the same results
    padded = CompiledStages(net, buckets=(8, 32), backend="eager")
    x = torch.randn(20, *SHAPE)
    with torch.no_grad():
        conf = [torch.softmax(z, dim=1).amax(dim=1) for z in net(x)]
    thresholds = [float(conf[0].median()), float(conf[1].median())]
    want = early_exit_inference(net, x, thresholds)
    got = early_exit_inference(padded, x, thresholds)
    assert torch.equal(got.exit_index, want.exit_index) and got.stage_batch_sizes == want.stage_batch_sizes
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    # one compiled graph per (stage, bucket), none falling back to eager: dynamo allows 8 recompilations per
    # code object, and 3 stages × 4 buckets = 12 graphs would exceed that if the stages shared one forward
    counters = torch._dynamo.utils.counters
    counters.clear()
    buckets = CompiledStages(net, buckets=(2, 4, 8, 32), backend="eager", dynamic=False)
    with torch.no_grad():
        for n in (20, 7, 3, 1):
            state: Any = torch.randn(n, *SHAPE)
            for k in range(3):
                state, _ = buckets.forward_stage(k, state)
    assert counters["stats"]["unique_graphs"] == 12
    assert counters["frames"]["ok"] == counters["frames"]["total"] == 12
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=r"buckets must be positive integers \(or None\), got \(0, 8\)"):
        CompiledStages(net, buckets=(0, 8))
    with pytest.raises(ValueError, match=r"stage index must be in \[0, 2\], got 3"):
        staged.forward_stage(3, x)
    with pytest.raises(ValueError, match=r"ResNetCifar has no `forward_stage"):
        CompiledStages(resnet8())


def test_what_cannot_be_staged_is_refused_with_the_reason() -> None:
    net = MultiExitNetwork(resnet8(), ["layer1.0.conv1"], 4, SHAPE)
    assert len(net(torch.randn(2, *SHAPE))) == 2  # training works on any backbone
    reason = r"'layer1.0.shortcut' does not take the output of 'layer1.0.bn2' as its only input"
    with pytest.raises(
        ValueError, match=r"cannot run ResNetCifar stage by stage with exits at .*: " + reason
    ):
        early_exit_inference(net, torch.randn(2, *SHAPE), 2.0)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match=r"'fc' does not take the output of 'conv' as its only input"):
        MultiExitNetwork(Functional(), ["conv"], 4, SHAPE).stages()
    with pytest.raises(ValueError, match=r"`thresholds` must hold 2 values"):
        early_exit_inference(tiny_msdnet(), torch.randn(2, *SHAPE), [0.5])

    class TwoExits(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x.flatten(1), x.flatten(1)]

    with pytest.raises(ValueError, match=r"TwoExits returned 2 logits but has no `forward_stage"):
        early_exit_inference(TwoExits(), torch.randn(2, 4), 0.5)
    declared = TwoExits()
    declared.num_exits = 2
    with pytest.raises(
        ValueError, match=r"TwoExits has no `forward_stage\(index, state\)`; it cannot stop early"
    ):
        early_exit_inference(declared, torch.randn(2, 4), 0.5)


# --- the LightningModule ------------------------------------------------------------------------------------------
def test_training_logs_every_exit_and_the_loss_is_the_weighted_sum() -> None:
    module = early_exit_module(exit_weights=[0.5, 1.0, 2.0], distill_weight=0.3, temperature=2.0)
    fit = trainer(limit_train_batches=2, limit_val_batches=2)
    fit.fit(module, train_dataloaders=image_data(), val_dataloaders=image_data(seed=1))
    metrics = fit.callback_metrics
    for stage in ("train", "val"):
        for k in (1, 2, 3):
            assert f"{stage}/acc_exit{k}" in metrics and f"{stage}/loss_exit{k}" in metrics
    assert "train/loss_distill" in metrics
    assert float(metrics["val/acc"]) == float(metrics["val/acc_exit3"])
    (result,) = fit.test(module, dataloaders=image_data(n=64, seed=2), verbose=False)
    assert {"test/acc", "test/acc_exit1", "test/loss_exit2"} <= set(result)

    fresh = early_exit_module(exit_weights=[0.5, 1.0, 2.0], distill_weight=0.3, temperature=2.0).eval()
    x, y = next(iter(image_data(n=16)))
    logits = fresh(x)
    ce = [F.cross_entropy(z, y) for z in logits]
    kl = sum(
        4.0
        * F.kl_div(
            F.log_softmax(z / 2, 1), F.log_softmax(logits[-1] / 2, 1), reduction="batchmean", log_target=True
        )
        for z in logits[:2]
    )
    expected = 0.5 * ce[0] + ce[1] + 2 * ce[2] + 0.3 * kl
    with pytest.warns(UserWarning, match=r"self.log\(\)"):  # no trainer: the step is called directly
        torch.testing.assert_close(fresh.training_step((x, y), 0), expected)


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = early_exit_module(seed=3)
    trainer(max_epochs=2, limit_train_batches=3).fit(straight, train_dataloaders=image_data())

    first = early_exit_module(seed=3)
    first.thresholds = [0.9, 0.8]
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(max_epochs=1, limit_train_batches=3, enable_checkpointing=True, callbacks=[ckpt]).fit(
        first, train_dataloaders=image_data()
    )
    resumed = early_exit_module(seed=11)
    trainer(max_epochs=2, limit_train_batches=3).fit(
        resumed, train_dataloaders=image_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed.thresholds == [0.9, 0.8]
    a, b = straight.state_dict(), resumed.state_dict()
    assert list(a) == list(b) and any(k.startswith("model.heads.1.") for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_msdnet_module_anytime_budgeted_and_predict() -> None:
    module = EarlyExitModule(tiny_msdnet(), num_classes=4, input_shape=SHAPE)
    assert module.num_exits == 3 and module.model.num_exits == 3
    trainer(limit_train_batches=2).fit(module, train_dataloaders=image_data())
    loader = image_data(n=64, seed=1)
    anytime = module.anytime_evaluation(loader)
    assert len(anytime.accuracy) == 3 and anytime.macs == cumulative_exit_macs(module.model, SHAPE)
    points = module.budgeted_evaluation(loader, loader, budgets=[0.2, 1.0, 3.0, [0.5, 0.0, 0.5]])
    avg = [p.avg_macs for p in points]
    assert avg[0] <= avg[1] <= avg[2] and anytime.macs[0] <= min(avg) and max(avg) <= anytime.macs[-1]
    for point in points:  # validation data = test data here: fractions met within one sample
        assert all(
            abs(f - q) <= 1 / 64 + 1e-9
            for f, q in zip(point.val_fractions, point.target_fractions, strict=True)
        )
        assert point.val_accuracy == point.accuracy
    x = next(iter(loader))[0]
    with pytest.raises(ValueError, match=r"no thresholds: pass `thresholds` or set `module.thresholds`"):
        module.early_exit_predict(x)
    module.thresholds = points[0].thresholds
    out = module.early_exit_predict(x)
    assert torch.equal(module.predict_step((x,), 0), out.predictions)
    assert out.stage_batch_sizes[0] == 32 and out.stage_batch_sizes[2] < 32


def test_a_model_with_one_output_and_no_exits_is_a_single_exit(caplog: pytest.LogCaptureFixture) -> None:
    module = EarlyExitModule(vgg(), num_classes=4, input_shape=SHAPE)
    assert module.num_exits == 1 and "single exit" in caplog.text
    assert len(module.exit_macs()) == 1
    assert module.early_exit_predict(torch.randn(3, *SHAPE), []).stage_batch_sizes == [3]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, r"`num_classes` must be >= 2, got 1"),
        ({"distill_weight": -1.0}, ValueError, r"`distill_weight` must be >= 0 .*got -1.0"),
        ({"temperature": 0.0}, ValueError, r"`temperature` must be > 0, got 0.0"),
        ({"head_channels": -1}, ValueError, r"`head_channels` must be >= 0 .*got -1"),
        ({"scheduler_interval": "batch"}, ValueError, r"one of \('epoch', 'step'\), got 'batch'"),
        ({"exits": "layer1"}, ValueError, r"`exits` must be a non-empty list of module paths or None, got 'layer1'"),
        ({"input_shape": None}, ValueError, r"`input_shape` is needed to build the exit heads at \['layer1', 'layer2'\]"),
        ({"exit_weights": [1.0, 1.0]}, ValueError, r"`exit_weights` must be 3 values >= 0 .*got \[1.0, 1.0\]"),
        ({"exit_weights": [0.0, 0.0, 0.0]}, ValueError, r"not all 0; got \[0.0, 0.0, 0.0\]"),
        ({"model": ClassificationModule(nn.Linear(2, 2), 2)}, TypeError, r"not a LightningModule\), got ClassificationModule"),
        ({"model": MSDNet(num_classes=4, input_shape=SHAPE, output="last", channels=2, growth=1, head_channels=2), "exits": None},
         ValueError, r"returned 1 logits but declares num_exits=3 \(an MSDNet must have output='all'\)"),
        ({"model": vgg(), "exits": None, "input_shape": None}, ValueError, r"cannot tell how many exits VGGSmall has"),
    ],
)  # fmt: skip
def test_bad_module_arguments_are_refused(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        early_exit_module(**kwargs)


# --- MSDNet -------------------------------------------------------------------------------------------------------
def test_msdnet_forward_backward_shapes_and_stages() -> None:
    net = tiny_msdnet(step=2)
    outs = net(torch.randn(3, *SHAPE))
    assert isinstance(outs, list) and [tuple(o.shape) for o in outs] == [(3, 4)] * 3
    sum(F.cross_entropy(z, torch.tensor([0, 1, 2])) for z in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    state, logits = net.forward_stage(0, torch.randn(2, *SHAPE))
    assert logits.shape == (2, 4)
    assert state is not None and [tuple(s.shape[2:]) for s in state] == [(12, 12), (6, 6), (3, 3)]
    state, _ = net.forward_stage(1, state)
    assert state is not None and len(state) == 3 and net.forward_stage(2, state)[0] is None
    # the last block drops the scales whose features could not reach the coarsest one any more
    assert [layer.drop for block in net.blocks for layer in block] == [0, 0, 0, 0, 1, 1]
    assert tiny_msdnet(output="last")(torch.randn(2, *SHAPE)).shape == (2, 4)
    assert tiny_msdnet(output="mean")(torch.randn(2, *SHAPE)).shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": "first"}, r"`output` must be one of \('all', 'last', 'mean'\); got 'first'"),
        ({"compression": 0.0}, r"`compression` must be in \(0, 1\]; got 0.0"),
        ({"num_blocks": 0}, r"`num_blocks` must be >= 1; got 0"),
        ({"scales": 5}, r"5 scales needs input_shape .*height, width >= 16; got \(1, 12, 12\)"),
    ],
)
def test_bad_msdnet_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_msdnet(**kwargs)
    with pytest.raises(ValueError, match=r"stage index must be in \[0, 2\]; got 3"):
        tiny_msdnet().forward_stage(3, torch.randn(1, *SHAPE))


def test_exit_head_shapes_and_errors() -> None:
    assert ExitHead((6,), 3)(torch.randn(2, 6)).shape == (2, 3)
    assert ExitHead((6, 10), 3, channels=4)(torch.randn(2, 6, 10)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"ExitHead needs a feature shape .* got \(\)"):
        ExitHead((), 3)
    with pytest.raises(ValueError, match=r"`channels` must be >= 0 .*got -2"):
        ExitHead((4, 2, 2), 3, channels=-2)
