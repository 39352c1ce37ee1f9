"""Channel surgery (core.surgery, core.structured): groups, cuts that give the same function, replay, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from effdl_lightning.core.structured import filter_pruning_plan, prune_to_budget
from effdl_lightning.core.surgery import ChannelCut, ChannelGraph, SurgeryError, apply_cut, compose_cuts
from effdl_lightning.measure import profile
from effdl_lightning.models import create

MODELS = [
    ("lenet5", (1, 28, 28)),
    ("vgg_small", (3, 32, 32)),
    ("resnet20", (3, 32, 32)),
    ("mobilenet_v2", (3, 32, 32)),
    ("shufflenet_v2", (3, 32, 32)),
    ("efficientnet", (3, 32, 32)),
]


class UserNet(nn.Module):
    """A user-written model: concatenation, a grouped conv, a channel split, an op without a rule."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.grouped = nn.Conv2d(14, 14, 3, padding=1, groups=2)
        self.c = nn.Conv2d(14, 12, 1)
        self.d = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        y = self.c(self.grouped(y))
        left, right = y.chunk(2, dim=1)
        z = self.d(torch.roll(left, 1, dims=1) + right)  # roll has no channel rule: its channels are kept
        z = nn.functional.adaptive_avg_pool2d(z, 4)
        return self.fc(z.view(z.size(0), -1))


def _masked_original(model: nn.Module, cut: ChannelCut) -> nn.Module:
    """The unpruned model with the removed channels' *inputs* zeroed in every consumer.

    A removed channel only ever reaches the model through conv/linear inputs, so this model computes
    exactly what the cut model computes.
    """
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for name, roles in cut.modules.items():
        if "in" in roles:
            weight = modules[name].weight
            keep = torch.zeros(weight.shape[1], dtype=torch.bool)
            keep[roles["in"]] = True
            with torch.no_grad():
                weight[:, ~keep] = 0
    return masked


def _randomize_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize(("name", "shape"), MODELS)
@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_a_cut_computes_what_the_model_with_those_channels_unread_computes(
    name: str, shape: tuple[int, ...], criterion: str
) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10, input_shape=shape).eval()
    _randomize_bn(model)
    graph = ChannelGraph(model, shape)
    plan = filter_pruning_plan(graph, 0.4, criterion=criterion, generator=torch.Generator().manual_seed(0))
    assert plan, "some channels are removable"
    macs_before = profile(model, shape, latency=False).macs
    params_before = sum(p.numel() for p in model.parameters())
    reference = _masked_original(model, graph.plan(plan))
    cut = graph.cut(plan)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert profile(model, shape, latency=False).macs < 0.8 * macs_before
    assert sum(p.numel() for p in model.parameters()) < params_before
    # the model's input channels and its outputs are never cut
    assert model(x).shape == (4, 10)
    assert cut.modules


@pytest.mark.parametrize(("name", "shape"), MODELS[:3])
def test_a_recorded_cut_replays_on_a_fresh_model_and_loads_the_weights(
    name: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10, input_shape=shape).eval()
    cut = ChannelGraph(model, shape).cut(filter_pruning_plan(ChannelGraph(model, shape), 0.5))
    record = cut.to_dict()
    fresh = create(name, num_classes=10, input_shape=shape).eval()
    apply_cut(fresh, ChannelCut.from_dict(record))
    fresh.load_state_dict(model.state_dict())  # strict: every shape agrees
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_resnet_groups_couple_the_residual_stream_and_keep_padded_channels() -> None:
    model = create("resnet20", num_classes=10, input_shape=(3, 32, 32))
    graph = ChannelGraph(model, (3, 32, 32))
    stream = graph.group("conv1")  # the stem writes the stage-1 residual stream
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stream.producers)
    inner = graph.group("layer1.0.conv1")  # a block's first conv: its own group (Li et al. prune these)
    assert inner.producers == ["layer1.0.conv1"] and inner.consumers == ["layer1.0.conv2"]
    assert not inner.frozen
    stage2 = graph.group("layer2.0.conv2")  # option-A shortcut: the zero-padded half cannot be removed
    assert 0 < len(stage2.frozen) < stage2.size
    assert any("F.pad" in r for r in stage2.frozen.values())
    classifier = graph.group("fc")
    assert classifier.reason == "model output"


def test_shufflenet_v2_split_and_shuffle_remove_the_same_position_in_both_halves() -> None:
    torch.manual_seed(0)
    model = create("shufflenet_v2", num_classes=10, input_shape=(3, 32, 32)).eval()
    graph = ChannelGraph(model, (3, 32, 32))
    plan = filter_pruning_plan(graph, 0.25)
    graph.cut(plan)
    for module in model.modules():  # every chunk(2) still splits evenly
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels
    model(torch.randn(2, 3, 32, 32))


def test_user_model_with_concat_grouped_conv_and_an_unknown_op() -> None:
    torch.manual_seed(0)
    model = UserNet().eval()
    _randomize_bn(model)
    graph = ChannelGraph(model, (3, 16, 16))
    a, b = graph.group("a"), graph.group("b")
    assert a is not b  # the two halves of the concatenation are separate groups
    assert a.consumers == [] and ("bn", "norm") in a.members
    # the grouped conv's inputs are kept: a and b feed it, so their channels are frozen with that reason
    assert a.reason is not None and "grouped conv 'grouped' (groups=2" in a.reason and len(a.frozen) == a.size
    # c feeds roll (no rule) and chunk: frozen with the op's name
    assert any("roll" in r for r in graph.group("c").frozen.values())
    d = graph.group("d")  # d -> pool -> view(size(0), -1) -> fc: prunable, fc's columns follow
    assert d.prunable == list(range(5))
    reference_plan = {"d": [1, 3]}
    reference = _masked_original(model, graph.plan(reference_plan))
    graph.cut(reference_plan)
    assert model.fc.in_features == 3 * 16 and model.d.out_channels == 3
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_a_constant_size_view_freezes_the_channels_it_reshapes() -> None:
    class Old(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.conv(x).view(-1, 144))

    graph = ChannelGraph(Old(), (1, 8, 8))
    conv = graph.group("conv")
    assert conv.reason is not None and "constant size 144" in conv.reason


def test_errors_are_clear() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    with pytest.raises(SurgeryError, match=r"cannot trace Branchy with torch\.fx"):
        ChannelGraph(Branchy(), (1, 5, 5))
    model = create("lenet5", num_classes=10, input_shape=(1, 28, 28))
    graph = ChannelGraph(model, (1, 28, 28))
    with pytest.raises(SurgeryError, match="cannot remove all 20 channels"):
        graph.cut({"conv1": list(range(20))})
    with pytest.raises(SurgeryError, match="cannot be removed: model output"):
        graph.cut({"fc2": [0]})
    with pytest.raises(KeyError, match="no channel group 'conv9'"):
        graph.cut({"conv9": [0]})
    with pytest.raises(ValueError, match="criterion must be one of"):
        filter_pruning_plan(graph, 0.5, criterion="taylor")
    with pytest.raises(SurgeryError, match="this model does not have"):
        apply_cut(nn.Sequential(nn.Linear(2, 2)), {"kind": "channel_cut", "modules": {"fc": {"out": [0]}}})


def test_l1_plan_removes_the_smallest_filters_and_excluded_layers_stay() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([3.0, 1.0, 4.0, 0.5]).reshape(4, 1, 1, 1))
    graph = ChannelGraph(model, (1, 4, 4), exclude=["2"])
    assert filter_pruning_plan(graph, 0.5) == {"0": [1, 3]}
    assert graph.group("2").reason == "layer '2' is excluded"


def test_prune_to_budget_halves_the_macs() -> None:
    torch.manual_seed(0)
    model = create("vgg_small", num_classes=10, input_shape=(3, 32, 32))

    def macs(m: nn.Module) -> float:
        return profile(m, (3, 32, 32), latency=False).macs

    before = macs(model)
    cut, ratio = prune_to_budget(model, (3, 32, 32), macs, 0.5)
    after = macs(model)
    assert 0.45 <= after / before <= 0.5 and 0 < ratio < 1 and cut.modules
    with pytest.raises(SurgeryError, match="above the target"):
        prune_to_budget(
            create("shufflenet_v1", num_classes=10, input_shape=(3, 32, 32)), (3, 32, 32), macs, 0.5
        )


def test_two_cuts_compose_into_one_that_replays_the_same_model() -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = create("resnet20", num_classes=10, input_shape=shape).eval()
    first = ChannelGraph(model, shape).cut({"layer1.0.conv1": [0, 5], "layer2.1.conv1": [3]})
    graph = ChannelGraph(model, shape)
    second = graph.cut({"layer1.0.conv1": [1], "conv1": [2]})
    fresh = create("resnet20", num_classes=10, input_shape=shape).eval()
    apply_cut(fresh, compose_cuts([first, second]))
    fresh.load_state_dict(model.state_dict())
    assert fresh.layer1[0].conv1.out_channels == 13
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_round_to_keeps_widths_on_multiples_of_8_and_meets_a_budget() -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = create("vgg_small", num_classes=10, input_shape=shape)
    graph = ChannelGraph(model, shape)
    plan = filter_pruning_plan(graph, 0.3, round_to=8)
    graph.cut(plan)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [24, 48, 88]

    def macs(m: nn.Module) -> float:
        return profile(m, shape, latency=False).macs

    resnet = create("resnet20", num_classes=10, input_shape=shape)
    before = macs(resnet)
    prune_to_budget(resnet, shape, macs, 0.5, round_to=8)
    assert macs(resnet) <= 0.5 * before
    widths = {m.out_channels for m in resnet.modules() if isinstance(m, nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths), widths
    with pytest.raises(ValueError, match="round_to must be >= 1, got 0"):
        filter_pruning_plan(graph, 0.3, round_to=0)
