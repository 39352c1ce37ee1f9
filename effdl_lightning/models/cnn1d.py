"""A small 1-D CNN for MNIST-1D (Greydanus & Kobak 2020, "Scaling Down Deep Learning", arXiv:2011.14439)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.registry import register_model


@register_model("cnn1d", default_input_shape=(1, 40))
class CNN1D(nn.Module):
    """``Conv1d → BatchNorm → ReLU`` layers, global average pooling over length, a linear classifier.

    Like the paper's convolutional baseline (three convolutions on the 40-sample signal), with BatchNorm
    and global pooling so any signal length works. Convolutions use padding ``kernel_size // 2``; every
    layer after the first has stride ``stride``. The layers are ``features.<i>`` (conv at ``i``, BN at
    ``i+1``); the classifier is ``head``.

    Args:
        num_classes: number of output logits.
        input_shape: ``(channels, length)``, e.g. ``(1, 40)``.
        channels: output channels of each convolution.
        kernel_size: odd kernel length of every convolution.
        stride: stride of the second and later convolutions.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 40),
        channels: Sequence[int] = (32, 64, 64),
        kernel_size: int = 5,
        stride: int = 2,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"cnn1d needs input_shape (channels, length), each at least 1; got {shape}")
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 1:
            raise ValueError(
                f"cnn1d channels must be a non-empty list of positive integers; got {tuple(channels)}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"cnn1d kernel_size must be a positive odd integer; got {kernel_size}")
        if stride < 1:
            raise ValueError(f"cnn1d stride must be >= 1; got {stride}")
        layers: list[nn.Module] = []
        in_channels = shape[0]
        for index, out_channels in enumerate(widths):
            layers += [
                nn.Conv1d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=1 if index == 0 else stride,
                    padding=kernel_size // 2,
                    bias=False,
                ),
                nn.BatchNorm1d(out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.pool(self.features(x))))
