"""CondConv: per-example expert mixtures as one grouped conv, the swap of pretrained convs, MACs, the config switch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl_lightning.measure import profile, register_macs_rule
from effdl_lightning.models import CondConv2d, VGGSmall, replace_convs_with_condconv_
from effdl_lightning.models.condconv import condconv_macs
from effdl_lightning.run import build, instantiate_model, run

from .conftest import ComposeFn


def _loop(layer: CondConv2d, x: torch.Tensor) -> torch.Tensor:
    """The definition, one example at a time: W(x_n) = Σ_e α_e(x_n)·W_e, y_n = conv(x_n, W(x_n))."""
    outs = []
    for n in range(x.shape[0]):
        alpha = torch.sigmoid(layer.routing_weight @ x[n].mean((1, 2)) + layer.routing_bias)
        weight = (alpha.view(-1, 1, 1, 1, 1) * layer.weight).sum(0)
        bias = (alpha.view(-1, 1) * layer.bias).sum(0) if layer.bias is not None else None
        outs.append(
            F.conv2d(x[n : n + 1], weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        )
    return torch.cat(outs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "groups": 2, "bias": False},
        {"kernel_size": (3, 1), "padding": (2, 0), "dilation": 2, "num_experts": 1},
        {"kernel_size": 3, "padding": 1, "groups": 4, "num_experts": 8},  # depthwise (in = groups = 4, out 8)
    ],
)
def test_batch_grouped_forward_equals_a_per_example_loop(kwargs: dict) -> None:
    torch.manual_seed(0)
    out_channels = 8
    layer = CondConv2d(4, out_channels, **kwargs)
    x = torch.randn(5, 4, 9, 7)
    y = layer(x)
    torch.testing.assert_close(y, _loop(layer, x), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()  # gradients reach the experts and the routing
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.routing_weight.grad is not None and layer.routing_weight.grad.abs().sum() > 0


def test_equal_experts_or_fixed_routing_reduce_to_a_plain_conv() -> None:
    torch.manual_seed(0)
    layer = CondConv2d(3, 5, 3, padding=1, num_experts=4)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.expand_as(layer.weight))
        layer.bias.copy_(conv.bias.expand_as(layer.bias))  # type: ignore[union-attr]
    # equal experts: y_n = (Σ_e α_e(x_n)) · conv(x_n)
    scale = layer.routing(x).sum(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(layer(x), scale * conv(x), rtol=1e-5, atol=1e-5)
    # fixed routing (R = 0): a static kernel Σ_e σ(b_e)·W_e for every example
    with torch.no_grad():
        layer.weight.normal_()
        layer.routing_weight.zero_()
        layer.routing_bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    alpha = torch.sigmoid(layer.routing_bias)
    static = nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        static.weight.copy_((alpha.view(-1, 1, 1, 1, 1) * layer.weight).sum(0))
        static.bias.copy_(alpha @ layer.bias)  # type: ignore[operator]
    torch.testing.assert_close(layer(x), static(x), rtol=1e-5, atol=1e-5)


def test_from_conv_starts_equivalent_with_distinct_experts_that_diverge() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    layer = CondConv2d.from_conv(conv, num_experts=4, noise=0.05)
    x = torch.randn(8, 4, 9, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    # α_e = 1/E for every input (R = 0, b = logit(1/E)), experts = W + zero-sum perturbations
    torch.testing.assert_close(layer.routing(x), torch.full((8, 4), 0.25))
    torch.testing.assert_close(layer.weight.mean(0), conv.weight, rtol=0, atol=1e-6)
    assert not torch.allclose(layer.weight[0], layer.weight[1])
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    (layer(x) - torch.randn(8, 6, 5, 5)).square().mean().backward()
    optimizer.step()
    alpha = layer.routing(x)
    assert alpha.std(1).min() > 0  # the routing now prefers some experts, per example
    assert not torch.allclose(alpha[0], alpha[1])


def test_replace_convs_keeps_a_trained_nets_outputs_and_selects_by_pattern() -> None:
    torch.manual_seed(0)
    net = VGGSmall(4, (1, 12, 12), widths=[8, "M", 16, "M"])
    net.eval()
    x = torch.randn(5, 1, 12, 12)
    before = net(x)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    swapped = replace_convs_with_condconv_(net, num_experts=3)
    assert list(swapped) == convs and all(m.num_experts == 3 for m in swapped.values())
    assert not any(type(m) is nn.Conv2d for m in net.modules())
    torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    # selection: include/exclude patterns and a minimum input width (keeps the 1-channel stem)
    torch.manual_seed(0)
    net2 = VGGSmall(4, (1, 12, 12), widths=[8, "M", 16, "M"])
    names = [n for n, m in net2.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(replace_convs_with_condconv_(net2, min_in_channels=2)) == names[1:]
    net3 = VGGSmall(4, (1, 12, 12), widths=[8, "M", 16, "M"])
    assert list(replace_convs_with_condconv_(net3, include="*", exclude=[names[0]])) == names[1:]


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"`num_experts` must be >= 1; got 0"):
        CondConv2d(4, 4, 3, num_experts=0)
    with pytest.raises(
        ValueError, match=r"in_channels \(4\) and out_channels \(6\) must be divisible by groups \(4\)"
    ):
        CondConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match=r"expects \(N, 4, H, W\) inputs; got \(2, 3, 5, 5\)"):
        CondConv2d(4, 4, 3)(torch.zeros(2, 3, 5, 5))
    with pytest.raises(
        ValueError, match=r"zero padding given as numbers; got padding=.*padding_mode='reflect'"
    ):
        CondConv2d.from_conv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"`num_experts` must be >= 1; got 0"):
        replace_convs_with_condconv_(net, num_experts=0)
    with pytest.raises(ValueError, match=r"`min_in_channels` must be >= 1; got 0"):
        replace_convs_with_condconv_(net, min_in_channels=0)
    with pytest.raises(ValueError, match=r"`noise` must be >= 0; got -1"):
        replace_convs_with_condconv_(net, noise=-1)
    with pytest.raises(ValueError, match=r"include pattern 'features\.\*' matches no nn.Conv2d; convs: 0, 2"):
        replace_convs_with_condconv_(net, include="features.*")
    with pytest.raises(ValueError, match=r"no nn.Conv2d selected for CondConv .*min_in_channels=8"):
        replace_convs_with_condconv_(net, min_in_channels=8)


def test_macs_count_routing_mixing_and_the_per_example_conv() -> None:
    register_macs_rule(CondConv2d, condconv_macs)  # run.py registers it for train.py runs
    layer = CondConv2d(4, 6, 3, padding=1, num_experts=5)
    conv_macs = 8 * 8 * 6 * 4 * 9
    routing, mixing = 4 * 5, 5 * 6 * 4 * 9 + 5 * 6
    report = profile(nn.Sequential(layer), (4, 8, 8), latency=False)
    assert report.macs == conv_macs + routing + mixing
    plain = profile(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1)), (4, 8, 8), latency=False)
    assert report.macs - plain.macs == routing + mixing and report.params > 5 * plain.params


# --- the config switch ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vgg_small", "resnet20", "mobilenet_v2"])
def test_model_conv_switch_swaps_convs_in_our_cnns(compose_cfg: ComposeFn, model: str) -> None:
    overrides = [f"model={model}", "+model.conv=condconv", "+model.conv_experts=2"]
    if model == "mobilenet_v2":
        overrides.append("model.width_mult=0.25")
    cfg = compose_cfg(overrides)
    _, module, _ = build(cfg)
    layers = [m for m in module.modules() if isinstance(m, CondConv2d)]
    assert layers and all(m.num_experts == 2 for m in layers)
    assert not any(type(m) is nn.Conv2d for m in module.modules())
    module.eval()
    assert module(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_condconv_experiment_runs_and_counts_macs(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg(
        ["experiment=condconv_vgg_mnist", "trainer.fast_dev_run=true", "callbacks.progress_bar=null"]
    )
    metrics = run(cfg)
    static = compose_cfg(["model=vgg_small"])
    plain = profile(instantiate_model(static.model), (1, 28, 28), latency=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert plain.macs < metrics["compress/macs"] < 1.1 * plain.macs  # routing + mixing are a small overhead
    bad = compose_cfg(["+model.conv=dynamic"])
    with pytest.raises(
        ValueError, match=r"`model.conv` must be one of \(None, 'conv', 'condconv'\); got 'dynamic'"
    ):
        build(bad)
    assert math.isfinite(metrics["test/loss"])
