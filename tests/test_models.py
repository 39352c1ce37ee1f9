"""Reference models: every registered model is walked (shape, NaN, gradient flow), plus per-model rules."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl_lightning.models import (
    CNN1D,
    MLP,
    BasicBlock,
    LeNet5,
    LeNet300100,
    ResNetCifar,
    VGGSmall,
    create,
    get_model_entry,
    list_models,
)
from effdl_lightning.models.resnet_cifar import PadShortcut


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, tuple[int, ...], int]:
    entry = get_model_entry(name)
    shape = entry.default_input_shape if input_shape is None else input_shape
    model = create(name, num_classes=entry.default_num_classes, input_shape=shape, **dict(entry.test_kwargs))
    return model, shape, entry.default_num_classes


def check_forward_backward(model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    # a real loss, so zero-initialized residual branches still get gradients downstream
    F.cross_entropy(out, torch.randint(0, num_classes, (2,))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"


@pytest.mark.parametrize("name", list_models())
def test_registered_model_default_input(name: str) -> None:
    model, shape, num_classes = build(name)
    check_forward_backward(model, shape, num_classes)


@pytest.mark.parametrize("name", list_models())
def test_registered_model_other_channels_and_size(name: str) -> None:
    default = get_model_entry(name).default_input_shape
    shape = (default[0] + 1, *(d + 4 for d in default[1:]))
    try:
        model, shape, num_classes = build(name, shape)
    except ValueError as err:  # a model that cannot take the shape must say so, naming it
        assert str(shape) in str(err)
        pytest.skip(f"{name} does not take {shape}: {err}")
    check_forward_backward(model, shape, num_classes)


@pytest.mark.parametrize("name", list_models())
def test_registered_constructor_takes_the_common_keywords(name: str) -> None:
    params = inspect.signature(get_model_entry(name).fn).parameters
    assert "num_classes" in params and "input_shape" in params


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'; known models: .*lenet5.*resnet20"):
        create("nope")


def test_lenet_parameter_counts_match_deep_compression() -> None:
    assert n_params(LeNet300100()) == 266_610
    assert n_params(LeNet5()) == 431_080
    assert n_params(LeNet5(conv_relu=True)) == 431_080
    # 8×8 digits: the first layer takes 64 inputs
    digits = create("lenet300", num_classes=10, input_shape=(1, 8, 8))
    assert isinstance(digits, LeNet300100) and digits.fc1.in_features == 64


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("lenet5", (1, 8, 8), r"lenet5 .*height, width >= 16; got \(1, 8, 8\)"),
        ("lenet5", (1, 40), r"lenet5 .*\(channels, height, width\).*got \(1, 40\)"),
        ("lenet300", (1, 0), r"lenet300 .*at least \(1,\); got \(1, 0\)"),
        ("mlp", (), r"mlp .*got \(\)"),
        ("vgg_small", (3, 4, 4), r"vgg_small with 3 max-pools .*>= 8; got \(3, 4, 4\)"),
        ("resnet20", (3, 32), r"resnet20 needs input_shape \(channels, height, width\).*got \(3, 32\)"),
        ("cnn1d", (1, 28, 28), r"cnn1d needs input_shape \(channels, length\).*got \(1, 28, 28\)"),
    ],
)
def test_unsupported_input_shape_is_refused(name: str, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create(name, num_classes=10, input_shape=shape)


def test_mlp_options() -> None:
    assert n_params(MLP(hidden=(), input_shape=(1, 40))) == 40 * 10 + 10
    assert any(isinstance(m, nn.Dropout) for m in MLP(dropout=0.5).modules())
    assert not any(isinstance(m, nn.Dropout) for m in MLP().modules())
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\); got 1.0"):
        MLP(dropout=1.0)
    with pytest.raises(ValueError, match=r"hidden widths must be positive integers; got \(8, 0\)"):
        MLP(hidden=(8, 0))


def test_vgg_small_options() -> None:
    model = VGGSmall(input_shape=(1, 28, 28), widths=(8, "M", 16, "M"), classifier="flatten")
    assert model.head.in_features == 16 * 7 * 7
    assert VGGSmall(widths=(8, 8, "M")).head.in_features == 8
    with pytest.raises(ValueError, match=r"classifier must be one of \('avg', 'flatten'\); got 'max'"):
        VGGSmall(classifier="max")
    with pytest.raises(ValueError, match=r"widths must hold positive integers .*got \(8, 'P'\)"):
        VGGSmall(widths=(8, "P"))
    with pytest.raises(ValueError, match=r"at least one conv; got \('M',\)"):
        VGGSmall(widths=("M",))


def test_resnet_cifar_parameter_counts_and_shortcuts() -> None:
    resnet20 = create("resnet20", num_classes=10, input_shape=(3, 32, 32))
    assert n_params(resnet20) == 269_722  # arXiv:1512.03385 Table 6: 0.27M
    assert n_params(create("resnet56", num_classes=10, input_shape=(3, 32, 32))) == 853_018  # 0.85M
    assert n_params(ResNetCifar(depth=20)) == 269_722
    shortcuts = [m.shortcut for m in resnet20.modules() if isinstance(m, BasicBlock)]
    assert sum(isinstance(s, PadShortcut) for s in shortcuts) == 2
    assert all(n_params(s) == 0 for s in shortcuts)
    option_b = ResNetCifar(depth=20, shortcut="B")
    # two 1×1 projections (16→32, 32→64) with their BatchNorm
    assert n_params(option_b) == 269_722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    wide = ResNetCifar(depth=8, width=2.0, input_shape=(1, 28, 28))
    assert wide.conv1.in_channels == 1 and wide.fc.in_features == 128


def test_resnet_cifar_zero_init_and_validation() -> None:
    model = ResNetCifar(depth=8, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks and all(int(torch.count_nonzero(block.bn2.weight)) == 0 for block in blocks)
    check_forward_backward(model, (3, 16, 16), 10)
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2 .*got 18"):
        ResNetCifar(depth=18)
    with pytest.raises(ValueError, match=r"shortcut must be one of \('A', 'B'\); got 'C'"):
        ResNetCifar(shortcut="C")
    with pytest.raises(ValueError, match=r"width multiplier must be > 0; got 0"):
        ResNetCifar(width=0)


def test_cnn1d_options() -> None:
    model = CNN1D(channels=(4, 8), kernel_size=3)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d)] == [4, 8]
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"kernel_size must be a positive odd integer; got 4"):
        CNN1D(kernel_size=4)
    with pytest.raises(ValueError, match=r"channels must be a non-empty list .*got \(\)"):
        CNN1D(channels=())
    with pytest.raises(ValueError, match=r"stride must be >= 1; got 0"):
        CNN1D(stride=0)
