"""A tiny 1-D ResNet for MNIST-1D signals: the CIFAR ResNet's layout (arXiv:1512.03385, §4.2) in 1-D.

Used as teacher and student for distillation on MNIST-1D (attention transfer needs the residual stages'
feature maps ``layer1``, ``layer2``, ``layer3``, whose lengths match between a wide and a thin network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.registry import register_model


class BasicBlock1d(nn.Module):
    """Two ``Conv1d → BN`` layers with ReLU between and after the residual sum; a 1×1 conv + BN projection
    shortcut (option B) where the shape changes.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the shortcut).
        kernel_size: odd kernel length.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm1d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@register_model("resnet1d", default_input_shape=(1, 40))
class ResNet1D(nn.Module):
    """Stem ``Conv1d → BN → ReLU``, stages of :class:`BasicBlock1d` (stride 2 at the start of every stage after
    the first), global average pooling over length, a linear classifier.

    Modules: ``conv1``/``bn1``/``relu`` (stem), ``layer1``… (stages), ``pool``, ``flatten``, ``fc``. Networks
    with the same number of stages have stage outputs of the same lengths whatever their widths, so
    ``layer<i>`` of a wide teacher and a thin student pair up for attention transfer.

    Args:
        num_classes: number of output logits.
        input_shape: ``(channels, length)``, e.g. ``(1, 40)``.
        widths: output channels of each stage (the stem has ``widths[0]``).
        blocks: basic blocks per stage (one number for every stage, or one per stage).
        kernel_size: odd kernel length of every convolution.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 40),
        widths: Sequence[int] = (16, 32, 64),
        blocks: int | Sequence[int] = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"resnet1d needs input_shape (channels, length), each at least 1; got {shape}")
        stage_widths = [int(w) for w in widths]
        if not stage_widths or min(stage_widths) < 1:
            raise ValueError(
                f"resnet1d widths must be a non-empty list of positive integers; got {tuple(widths)}"
            )
        per_stage = [int(blocks)] * len(stage_widths) if isinstance(blocks, int) else [int(b) for b in blocks]
        if len(per_stage) != len(stage_widths) or min(per_stage) < 1:
            raise ValueError(
                f"resnet1d blocks must be a positive int or one positive int per stage ({len(stage_widths)}); "
                f"got {blocks!r}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"resnet1d kernel_size must be a positive odd integer; got {kernel_size}")
        self.conv1 = nn.Conv1d(shape[0], stage_widths[0], kernel_size, padding=kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(stage_widths[0])
        self.relu = nn.ReLU()
        channels = stage_widths[0]
        for index, (width, count) in enumerate(zip(stage_widths, per_stage, strict=True)):
            stage = [
                BasicBlock1d(
                    channels if b == 0 else width, width, 2 if (b == 0 and index > 0) else 1, kernel_size
                )
                for b in range(count)
            ]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            channels = width
        self.num_stages = len(stage_widths)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(self.flatten(self.pool(x)))
