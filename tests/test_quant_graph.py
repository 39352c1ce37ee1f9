"""Graph-level activation sites (core/quant/graph.py): where quantizers go, what they do, how they replay."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from effdl_lightning.callbacks import QuantizationAwareTraining
from effdl_lightning.core.quant.graph import output_quantizers, plan_activation_sites
from effdl_lightning.core.quant.modules import QuantizationConfig, quantize_, quantized_layers
from effdl_lightning.core.record import CHECKPOINT_KEY, replay
from effdl_lightning.models.blocks import InvertedResidual
from effdl_lightning.models.resnet_cifar import BasicBlock
from tests.structured_helpers import cnn_module, cnn_trainer, image_data


def resnet_piece(classes: int = 10) -> nn.Sequential:
    """A stem, a strided option-A block (slice + zero pad shortcut) and an identity block, then a head."""
    stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))
    return nn.Sequential(stem, BasicBlock(8, 16, stride=2), BasicBlock(16, 16), head)


class SharedReLU(nn.Module):
    """torchvision's BasicBlock habit: one ReLU module called twice, so no hook can single out the add's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.relu = (
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        return self.relu(self.conv2(out) + x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 1 if float(y.sum()) > 0 else y - 1  # data-dependent control flow


def trained(model: nn.Module, config: QuantizationConfig, steps: int = 5) -> nn.Module:
    torch.manual_seed(0)
    quantize_(model, config)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 1, 12, 12))
    return model.eval()


def test_residual_adds_read_and_write_quantized_tensors() -> None:
    model = resnet_piece()
    hosts, hosted = plan_activation_sites(
        model, {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    )
    # the stem's ReLU (block 1's input, read by its conv1 and, through slice + pad, by its shortcut), each
    # block's bn2 (the residual branch) and relu2 (the add's output, after its ReLU)
    assert sorted(hosts) == ["0.2", "1.bn2", "1.relu2", "2.bn2", "2.relu2"]
    assert hosted == {"1.conv1", "2.conv1"}  # they read a hosted tensor: no second quantizer
    model = trained(model, QuantizationConfig("int8"))
    layers = quantized_layers(model)
    assert layers["1.conv1"].input_quantizer is None and layers["1.conv2"].input_quantizer is not None
    assert set(output_quantizers(model)) == set(hosts)
    seen: dict[str, torch.Tensor] = {}
    for path in hosts:
        model.get_submodule(path).register_forward_hook(lambda m, a, o, p=path: seen.__setitem__(p, o))
    with torch.no_grad():
        model(torch.randn(8, 1, 12, 12))
    for path, out in seen.items():  # every hosted tensor lies on its quantizer's grid
        scale, zero = output_quantizers(model)[path].qparams()
        codes = out / scale + zero
        torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
        assert codes.min() >= 0 and codes.max() <= 255
    relu_zero = output_quantizers(model)["1.relu2"].qparams()[1]
    assert int(relu_zero) == 0  # a ReLU output at zero point 0: an int8 runtime drops the ReLU


def test_inverted_residual_hosts_the_block_output() -> None:
    """``return x + self.conv(x)``: the add is the block's output, so the block itself hosts the quantizer."""
    model = nn.Sequential(nn.Conv2d(1, 8, 1), InvertedResidual(8, 8, 3, 1, 2.0, "relu6"),
                          InvertedResidual(8, 8, 3, 1, 2.0, "relu6"))  # fmt: skip
    hosts, hosted = plan_activation_sites(model, {"1.conv_pw.conv", "2.conv_pw.conv"})
    assert {"1", "2"} <= set(hosts)
    assert hosted == {"1.conv_pw.conv", "2.conv_pw.conv"}


def test_an_add_that_no_hook_can_reach_stays_float(caplog: pytest.LogCaptureFixture) -> None:
    model = SharedReLU()
    with caplog.at_level(logging.INFO, logger="effdl_lightning.core.quant.graph"):
        hosts, hosted = plan_activation_sites(model, {"conv1", "conv2"})
    assert hosts == [] and hosted == set()
    assert "stays float" in caplog.text and "called 2 times" in caplog.text


def test_sites_modes_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    inputs = trained(resnet_piece(), QuantizationConfig("int8", activation_sites="inputs"))
    assert output_quantizers(inputs) == {}
    assert all(m.input_quantizer is not None for m in quantized_layers(inputs).values())
    dorefa = resnet_piece()  # 'auto' with a scheme that quantizes layer inputs as its paper does
    quantize_(dorefa, QuantizationConfig("dorefa"))
    assert output_quantizers(dorefa) == {}
    with caplog.at_level(logging.WARNING):
        quantize_(Untraceable(), QuantizationConfig("int8"))
    assert "falls back to layer inputs" in caplog.text
    with pytest.raises(ValueError, match=r"not torch\.fx-traceable"):
        quantize_(Untraceable(), QuantizationConfig("int8", activation_sites="graph"))


def test_bad_sites_arguments() -> None:
    with pytest.raises(
        ValueError, match=r"activation_sites='everywhere'; allowed: \('auto', 'inputs', 'graph'\)"
    ):
        QuantizationConfig("int8", activation_sites="everywhere")
    with pytest.raises(ValueError, match="activation_sites='graph' needs the int8/affine schemes"):
        QuantizationConfig("binarynet", activation_sites="graph")
    with pytest.raises(ValueError, match=r"activation_sites=.graph. needs.*activation_bits=None"):
        QuantizationConfig("int8", activation_bits=32, activation_sites="graph")


def test_the_record_replays_the_sites_on_a_fresh_model_without_tracing() -> None:
    torch.manual_seed(0)
    source = resnet_piece()
    record = quantize_(source, QuantizationConfig("int8"))
    assert set(record["outputs"]) == {"0.2", "1.bn2", "1.relu2", "2.bn2", "2.relu2"}
    source.train()
    with torch.no_grad():
        source(torch.randn(16, 1, 12, 12))
    fresh = resnet_piece()
    replay(fresh, [record])
    assert fresh.state_dict().keys() == source.state_dict().keys()
    fresh.load_state_dict(source.state_dict())
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), source.eval()(x))
    clone = copy.deepcopy(fresh)  # hooks survive a deep copy, bound to the copy's quantizers
    with torch.no_grad():
        assert torch.equal(clone(x), fresh(x))
    bad = dict(record, outputs={"0": record["outputs"]["0.2"]})
    with pytest.raises(ValueError, match="'0' is a Sequential: it cannot host"):
        replay(resnet_piece(), [bad])


@pytest.mark.parametrize("sites", ["auto", "inputs"])
def test_resume_mid_qat_on_a_residual_model_equals_an_uninterrupted_run(tmp_path: Path, sites: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def make() -> QuantizationAwareTraining:
        return QuantizationAwareTraining(start_epoch=1, freeze_ranges_epoch=2, activation_sites=sites)

    def module(seed: int = 0) -> Any:
        torch.manual_seed(0)  # the same initial weights for every run
        return cnn_module(seed, model=resnet_piece(4))

    straight = module()
    cnn_trainer([make()], max_epochs=3).fit(straight, train_dataloaders=image_data())
    first = module()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cnn_trainer([make(), ckpt], max_epochs=2, enable_checkpointing=True).fit(
        first, train_dataloaders=image_data()
    )
    stored = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(stored[CHECKPOINT_KEY]["entries"][0]["outputs"]) == (5 if sites == "auto" else 0)
    resumed = module(seed=7)
    cnn_trainer([make()], max_epochs=3).fit(
        resumed, train_dataloaders=image_data(), ckpt_path=str(tmp_path / "last.ckpt")
    )
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and any("output_quantizer" in k for k in a) == (sites == "auto")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
