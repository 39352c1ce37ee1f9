"""CIFAR ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition", arXiv:1512.03385, §4.2).

A 3×3 stem conv with 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels (the
first block of stages 2 and 3 has stride 2), global average pooling and a linear classifier: ``6n + 2``
layers. ResNet-20 (n=3) has 269,722 parameters and ResNet-56 (n=9) 853,018 with the paper's option A
shortcuts at 10 classes (the paper's Table 6 says 0.27M and 0.85M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from effdl_lightning.models.registry import register_model

_SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels (parameter-free)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Two 3×3 ``Conv → BN`` layers with ReLU between and after the residual sum (arXiv:1512.03385, Fig. 2).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the shortcut).
        shortcut: ``"A"`` (zero-pad identity) or ``"B"`` (1×1 conv + BN projection) where the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                if out_channels < in_channels:
                    raise ValueError(
                        f"option A shortcut cannot reduce channels ({in_channels} -> {out_channels})"
                    )
                self.shortcut = PadShortcut(stride, out_channels - in_channels)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (arXiv:1512.03385, §4.2).

    Modules: ``conv1``/``bn1`` (stem), ``layer1``…``layer3`` (stages of :class:`BasicBlock`), ``pool``,
    ``fc``. Any input channel count and any image size of at least 1×1 work (global pooling).

    Args:
        depth: ``6n + 2`` layers, e.g. 20, 32, 44, 56, 110.
        num_classes: number of output logits.
        input_shape: ``(channels, height, width)``.
        shortcut: ``"A"`` (the paper's CIFAR choice: zero-padded identity, no parameters) or ``"B"``
            (1×1 conv projection with BatchNorm) where a block changes shape.
        width: multiplier on the stage widths 16/32/64 (rounded, at least 1).
        zero_init_residual: zero the last BN scale of each block so every block starts as identity
            (Goyal et al. 2017, arXiv:1706.02677).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        shortcut: str = "A",
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"ResNetCifar depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, ...); got {depth}"
            )
        if shortcut not in _SHORTCUTS:
            raise ValueError(f"ResNetCifar shortcut must be one of {_SHORTCUTS}; got {shortcut!r}")
        if width <= 0:
            raise ValueError(f"ResNetCifar width multiplier must be > 0; got {width}")
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"resnet{depth} needs input_shape (channels, height, width), each at least 1; got {shape}"
            )
        blocks = (depth - 2) // 6
        widths = [max(1, round(w * width)) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        channels = widths[0]
        stages: list[nn.Sequential] = []
        for index, out_channels in enumerate(widths):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(channels, out_channels, stride=stride, shortcut=shortcut))
                channels = out_channels
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet_cifar", default_input_shape=(3, 32, 32), test_kwargs={"depth": 8})
def resnet_cifar(
    depth: int = 20,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    shortcut: str = "A",
    width: float = 1.0,
    zero_init_residual: bool = False,
) -> ResNetCifar:
    """CIFAR ResNet of any depth ``6n + 2`` (arXiv:1512.03385), see :class:`ResNetCifar`."""
    return ResNetCifar(depth, num_classes, input_shape, shortcut, width, zero_init_residual)


@register_model("resnet20", default_input_shape=(3, 32, 32))
def resnet20(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    shortcut: str = "A",
    width: float = 1.0,
    zero_init_residual: bool = False,
) -> ResNetCifar:
    """ResNet-20 (arXiv:1512.03385): 3 blocks per stage, 0.27M parameters with option A."""
    return ResNetCifar(20, num_classes, input_shape, shortcut, width, zero_init_residual)


@register_model("resnet56", default_input_shape=(3, 32, 32), test_kwargs={"width": 0.5})
def resnet56(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    shortcut: str = "A",
    width: float = 1.0,
    zero_init_residual: bool = False,
) -> ResNetCifar:
    """ResNet-56 (arXiv:1512.03385): 9 blocks per stage, 0.85M parameters with option A."""
    return ResNetCifar(56, num_classes, input_shape, shortcut, width, zero_init_residual)
