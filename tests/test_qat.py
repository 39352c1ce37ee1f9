"""QuantizationAwareTraining and quantize_: any model, resume, load, composition with pruning, DDP, errors."""

from __future__ import annotations

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
from effdl_lightning.callbacks import MagnitudePruning, QuantizationAwareTraining
from effdl_lightning.core.quant.modules import (
    QuantizationConfig,
    quantize_,
    quantized_layers,
    quantized_size_bytes,
)
from effdl_lightning.core.record import CHECKPOINT_KEY, get_record
from effdl_lightning.models import create
from tests.structured_helpers import cnn_module, cnn_trainer, image_data, small_cnn

ROOT = Path(__file__).resolve().parents[1]


def test_default_is_int8_on_every_conv_and_linear_and_matches_torch_fake_quant() -> None:
    module = cnn_module()
    qat = QuantizationAwareTraining()
    cnn_trainer([qat], max_epochs=1).fit(module, train_dataloaders=image_data())
    layers = quantized_layers(module.model)
    assert list(layers) == ["0", "4", "9", "11"]
    conv = layers["4"]
    x = torch.relu(torch.randn(2, 16, 6, 6))
    conv.eval()
    with torch.no_grad():
        w_scale, w_zp = conv.weight_quantizer.qparams()
        a_scale, a_zp = conv.input_quantizer.qparams()
        assert w_scale.shape == (24,) and bool((w_zp == 0).all())
        w = torch.fake_quantize_per_channel_affine(conv.weight, w_scale, w_zp.int(), 0, -127, 127)
        xq = torch.fake_quantize_per_tensor_affine(x, float(a_scale), int(a_zp), 0, 255)
        expected = nn.functional.conv2d(xq, w, conv.bias, padding=1)
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-6)


def test_the_swap_keeps_parameters_so_training_continues_on_them() -> None:
    module = cnn_module()
    before = {n: p for n, p in module.named_parameters()}
    seen: list[set[int]] = []

    class Params(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append({id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]})

    weights = module.model[4].weight.detach().clone()
    cnn_trainer([QuantizationAwareTraining(start_epoch=1), Params()], max_epochs=2).fit(
        module, train_dataloaders=image_data()
    )
    after = dict(module.named_parameters())
    assert set(after) == set(before) and all(after[n] is before[n] for n in before)
    assert seen[1] == {id(p) for p in before.values()}
    assert not torch.equal(module.model[4].weight, weights)


def test_resume_mid_qat_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> QuantizationAwareTraining:
        return QuantizationAwareTraining(start_epoch=1, freeze_ranges_epoch=3)

    straight = cnn_module()
    cnn_trainer([make()], max_epochs=4).fit(straight, train_dataloaders=image_data())

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = cnn_module()
    cnn_trainer([make(), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        first, train_dataloaders=image_data()
    )
    stored = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert [e["kind"] for e in stored[CHECKPOINT_KEY]["entries"]] == ["quantize"]

    resumed = cnn_module(seed=7)
    cnn_trainer([make()], max_epochs=4).fit(
        resumed, train_dataloaders=image_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert len(get_record(resumed.model)) == 1  # replayed, not quantized twice
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and any("input_quantizer" in k for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_a_quantized_checkpoint_loads_into_a_freshly_built_model(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = cnn_module()
    cnn_trainer(
        [QuantizationAwareTraining(scheme="dorefa", weight_bits=2, activation_bits=4), ckpt],
        max_epochs=1,
        enable_checkpointing=True,
    ).fit(module, train_dataloaders=image_data())
    x = torch.randn(5, 1, 12, 12)
    module.eval()
    with torch.no_grad():
        expected = module(x)
    net = load_compressed(small_cnn(), tmp_path / "last.ckpt").eval()
    assert list(quantized_layers(net)) == ["4", "9"]  # DoReFa: first and last layers stay full precision
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_pruned_zeros_stay_zero_under_quantization_in_one_fit() -> None:
    module = cnn_module()
    pruning = MagnitudePruning(target_sparsity=0.6, schedule="one_shot", make_permanent=False)
    qat = QuantizationAwareTraining(
        scheme="dorefa", weight_bits=3, first_layer="quantize", last_layer="quantize"
    )
    cnn_trainer([pruning, qat], max_epochs=2).fit(module, train_dataloaders=image_data())
    for name, layer in quantized_layers(module.model).items():
        mask = pruning.masks[f"{name}.weight"]
        assert 0.55 <= 1 - mask.float().mean() <= 0.65
        assert bool((layer.weight[~mask] == 0).all())
        assert bool((layer.quantized_weight()[~mask] == 0).all()), name  # DoReFa's grid has no zero


@pytest.mark.parametrize("stochastic", [False, True])
def test_binaryconnect_clips_real_weights_binarizes_the_forward_and_learns(stochastic: bool) -> None:
    module = cnn_module()
    qat = QuantizationAwareTraining(scheme="binaryconnect", stochastic=stochastic)
    cnn_trainer([qat], max_epochs=4).fit(module, train_dataloaders=image_data())
    for layer in quantized_layers(module.model).values():
        h = layer.weight_quantizer.h
        fan_in, fan_out = layer.weight[0].numel(), layer.weight.shape[0] * layer.weight[0, 0].numel()
        assert h == pytest.approx((1.5 / (fan_in + fan_out)) ** 0.5)  # Glorot's scale, per layer
        assert float(layer.weight.detach().abs().max()) <= float(torch.tensor(h))  # clipped in float32
        layer.weight_quantizer.train()
        h32 = float(torch.tensor(h))  # the weights are float32
        assert set(layer.quantized_weight().unique().tolist()) <= {-h32, h32}
    module.eval()
    x, y = next(iter(image_data(n=128, batch_size=128)))
    with torch.no_grad():
        if stochastic:  # the paper's test-time rule: the real-valued weights, which are at the scale of +-H
            layer = quantized_layers(module.model)["4"]
            assert torch.equal(layer.quantized_weight(), layer.weight)
        else:  # +-H weights; this tiny task is too small for stochastic BC (the MNIST MLP benchmark learns)
            assert float((module(x).argmax(1) == y).float().mean()) > 0.6  # 4 classes: chance is 0.25


def test_binarynet_keeps_the_first_input_real_and_warns_on_unsigned_inputs() -> None:
    model = create("mlp", num_classes=4, input_shape=(1, 12, 12), hidden=(32, 16), activation="relu")
    module = cnn_module(model=model)
    with pytest.warns(UserWarning, match="sign is constant"):
        cnn_trainer([QuantizationAwareTraining(scheme="binarynet")], max_epochs=1).fit(
            module, train_dataloaders=image_data()
        )
    layers = quantized_layers(module.model)
    first, *rest = layers.values()
    assert first.input_quantizer is None and first.weight_quantizer is not None
    assert all(layer.input_quantizer is not None for layer in rest)


def test_frozen_ranges_and_batch_norm_statistics_stop_moving() -> None:
    module = cnn_module()
    states: list[dict[str, torch.Tensor]] = []

    class Snap(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            sd = pl_module.model.state_dict()
            states.append(
                {k: v.clone() for k, v in sd.items() if "running_mean" in k or "input_quantizer" in k}
            )

    qat = QuantizationAwareTraining(freeze_ranges_epoch=2, freeze_bn_epoch=2)
    cnn_trainer([qat, Snap()], max_epochs=3).fit(module, train_dataloaders=image_data())
    for key in states[1]:  # epoch 2 ran frozen
        assert torch.equal(states[1][key], states[2][key]), key
    for kind in ("running_mean", "input_quantizer.max_val"):  # epoch 1 still moved them
        assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0] if kind in k), kind


def test_learned_scales_join_the_optimizer_and_learn() -> None:
    module = cnn_module()
    qat = QuantizationAwareTraining(scheme="affine", weight_bits=4, activation_bits=4, learn_scale=True)
    scales: list[torch.Tensor] = []

    class Snap(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            layer = quantized_layers(pl_module.model)["4"]
            params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            assert id(layer.weight_quantizer.scale) in params
            scales.append(layer.weight_quantizer.scale.detach().clone())

    cnn_trainer([qat, Snap()], max_epochs=2).fit(module, train_dataloaders=image_data())
    assert not torch.equal(scales[0], scales[1])


@pytest.mark.parametrize(
    "name", ["vgg_small", "resnet20", "mobilenet_v2", "shufflenet_v2", "efficientnet", "lenet5"]
)
def test_quantize_any_architecture_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10, input_shape=(3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    entry = quantize_(model, QuantizationConfig("int8"))
    convs_and_linears = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(entry["layers"]) == len(convs_and_linears)
    model.train()  # batch statistics: an untrained net's activations stay O(1) (not so with eval-mode BN)
    model(x).sum().backward()  # observes the ranges
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    layers = quantized_layers(model)
    inputs: dict[str, torch.Tensor] = {}
    for layer_name, layer in layers.items():
        layer.register_forward_pre_hook(lambda m, args, n=layer_name: inputs.__setitem__(n, args[0]))
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
        errors = []
        for layer_name, layer in layers.items():  # each layer at int8 vs in full precision, same input
            quantized = layer(inputs[layer_name])
            for q in layer.children():
                q.enabled = False
            dense = layer(inputs[layer_name])
            if float(dense.norm()) > 1e-6:
                errors.append(float((quantized - dense).norm() / dense.norm()))
    # int8: about 1 % per layer; a few layers reading 4 pooled vectors (squeeze-and-excitation) with outliers
    # lose more; a wrong scale or zero point would give errors of order 1
    assert len(errors) >= 0.9 * len(layers)
    assert 0 < sorted(errors)[len(errors) // 2] < 0.03 and max(errors) < 0.25


def test_size_estimate_counts_quantized_weights_at_their_width() -> None:
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    fp32 = quantized_size_bytes(model)
    assert fp32 == 4 * sum(p.numel() for p in model.parameters())
    quantize_(model, QuantizationConfig("int8"))
    model(torch.randn(3, 100))
    # weights at 1 byte + 4 bytes per output channel scale; biases fp32
    assert quantized_size_bytes(model) == 100 * 50 + 50 * 10 + 4 * (50 + 10) + 4 * (50 + 10)


@pytest.mark.ddp
def test_ddp_two_processes_agree_with_one(tmp_path: Path) -> None:
    script = ROOT / "tests" / "scripts" / "qat_ddp.py"
    for devices in (1, 2):
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(devices)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "rank0_of1.pt", weights_only=True)["weights"]
    r0 = torch.load(tmp_path / "rank0_of2.pt", weights_only=True)["weights"]
    r1 = torch.load(tmp_path / "rank1_of2.pt", weights_only=True)["weights"]
    assert any("input_quantizer" in k for k in one)
    for name in one:
        assert torch.equal(r0[name], r1[name]), name
        # float sums in another order (2 x 16 samples vs 32) can flip a rounding: a looser bound than fp32's
        torch.testing.assert_close(r0[name].float(), one[name].float(), rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "ternary"}, r"unknown quantization scheme 'ternary'; known: \['affine', 'binaryconnect'"),
        ({"weight_bits": 4}, r"scheme 'int8': weight_bits=4 is outside the allowed \[8\]"),
        ({"scheme": "affine", "weight_bits": 1}, r"weight_bits=1 is outside the allowed 2..16"),
        ({"scheme": "binarynet", "weight_bits": 2}, r"scheme 'binarynet': weight_bits=2 is outside"),
        ({"scheme": "dorefa", "activation_bits": 40}, r"activation_bits=40 is outside the allowed 1..31"),
        ({"scheme": "int8", "gradient_bits": 8}, r"gradient_bits=8 is outside"),
        (
            {"first_layer": "half"},
            r"first_layer='half'; allowed: \('quantize', 'weights', 'full_precision'\)",
        ),
        ({"scheme": "dorefa", "learn_scale": True}, r"learn_scale applies to the int8/affine schemes"),
        ({"stochastic": True}, r"stochastic applies to the binaryconnect scheme"),
        ({"start_epoch": -1}, r"`start_epoch` must be >= 0 or None, got -1"),
        ({"clip_weights": -1.0}, r"`clip_weights` must be >= 0 or None, got -1.0"),
        ({"activation_sites": "all"}, r"activation_sites='all'; allowed: \('auto', 'inputs', 'graph'\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        QuantizationAwareTraining(**kwargs)


def test_a_pattern_that_matches_nothing_fails_at_setup_and_quantize_applies_once() -> None:
    with pytest.raises(MisconfigurationException, match="include pattern 'conv9' matches no layer"):
        cnn_trainer([QuantizationAwareTraining(include="conv9")], max_epochs=1).fit(
            cnn_module(), train_dataloaders=image_data()
        )
    model = small_cnn()
    quantize_(model, QuantizationConfig("int8"))
    with pytest.raises(ValueError, match="already has quantized layers"):
        quantize_(model, QuantizationConfig("int8"))
