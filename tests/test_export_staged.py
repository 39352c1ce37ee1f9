"""Early-exit stages on ONNX Runtime (`export_stages_onnx`): the eager early exit, sample for sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from effdl_lightning.core.dynamic import MultiExitNetwork, early_exit_inference
from effdl_lightning.export import OnnxStages, export_stages_onnx
from effdl_lightning.models import MSDNet, ResNetCifar

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

SHAPE = (1, 12, 12)


def msdnet() -> MSDNet:
    torch.manual_seed(0)
    return MSDNet(4, SHAPE, num_blocks=3, step=1, scales=3, channels=4, growth=2, head_channels=8).eval()


def multi_exit_resnet() -> MultiExitNetwork:
    torch.manual_seed(1)
    backbone = ResNetCifar(depth=8, num_classes=4, input_shape=SHAPE, width=0.5)
    return MultiExitNetwork(backbone, ["layer1", "layer2"], 4, SHAPE).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, OnnxStages, Path]]:
    out = {}
    for name, build in (("msdnet", msdnet), ("multi_exit", multi_exit_resnet)):
        net = build()
        directory = tmp_path_factory.mktemp(name)
        out[name] = (net, export_stages_onnx(net, torch.randn(1, *SHAPE), directory), directory)
    return out


def middle_thresholds(net: nn.Module, x: Tensor) -> list[float]:
    """Per exit, halfway between the two middle confidences: about half leave, none within float error."""
    with torch.no_grad():
        conf = [torch.softmax(z, dim=1).amax(dim=1).sort().values for z in net(x)]
    n = x.shape[0]
    return [float(c[n // 2 - 1] + c[n // 2]) / 2 for c in conf[:-1]]


@pytest.mark.parametrize("name", ["msdnet", "multi_exit"])
def test_onnx_stages_give_the_eager_early_exit(
    exported: dict[str, tuple[nn.Module, OnnxStages, Path]], name: str
) -> None:
    net, stages, directory = exported[name]
    assert stages.num_exits == net.num_exits == 3
    assert sorted(p.name for p in directory.iterdir()) == [
        "stage_0.onnx",
        "stage_1.onnx",
        "stage_2.onnx",
        "stages.json",
    ]
    torch.manual_seed(2)
    for n in (20, 7):
        x = torch.randn(n, *SHAPE)
        thresholds = middle_thresholds(net, x)
        want = early_exit_inference(net, x, thresholds)
        got = early_exit_inference(stages, x, thresholds)
        assert torch.equal(got.exit_index, want.exit_index)
        assert got.stage_batch_sizes == want.stage_batch_sizes
        assert got.stage_batch_sizes[0] == n and got.stage_batch_sizes[2] < n  # samples really left the batch
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    # thresholds above 1: every sample through every stage, the last exit's logits
    x = torch.randn(9, *SHAPE)
    with torch.no_grad():
        full = net(x)
    out = early_exit_inference(stages, x, 1.5)
    assert out.stage_batch_sizes == [9, 9, 9] and bool((out.exit_index == 2).all())
    torch.testing.assert_close(out.logits, full[-1], rtol=1e-4, atol=1e-4)
    # every exit at once, and a single sample (the graphs' batch dimension is symbolic)
    for got_k, want_k in zip(stages(x), full, strict=True):
        torch.testing.assert_close(got_k, want_k, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stages(x[:1])[-1], full[-1][:1], rtol=1e-4, atol=1e-4)
    # the directory alone, without the PyTorch model
    reloaded = OnnxStages.load(directory, threads=2)
    torch.testing.assert_close(early_exit_inference(reloaded, x, 1.5).logits, full[-1], rtol=1e-4, atol=1e-4)


def test_onnx_stages_refuse_what_they_cannot_run(
    exported: dict[str, tuple[nn.Module, OnnxStages, Path]], tmp_path: Path
) -> None:
    _, stages, _ = exported["msdnet"]
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match=r"stage index must be in \[0, 2\], got 3"):
        stages.forward_stage(3, x)
    with pytest.raises(ValueError, match=r"stage 1 takes list \(3 tensors\); got tensor \(1\)"):
        stages.forward_stage(1, x)
    with pytest.raises(ValueError, match=r"ResNetCifar has no `num_exits` and `forward_stage"):
        export_stages_onnx(ResNetCifar(depth=8, num_classes=4, input_shape=SHAPE), x, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"stages.json not found: not a directory written by"):
        OnnxStages.load(tmp_path)

    class DictState(nn.Module):
        num_exits = 2

        def forward_stage(self, index: int, state: Any) -> tuple[Any, Tensor]:
            return ({"h": state} if index == 0 else None), state.flatten(1)

    with pytest.raises(
        TypeError, match=r"the features stage 0 returns is a dict; ONNX stages take and return"
    ):
        export_stages_onnx(DictState(), x, tmp_path)
