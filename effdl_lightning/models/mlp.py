"""A configurable multilayer perceptron, the simplest baseline for any input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.registry import register_model


@register_model("mlp", default_input_shape=(1, 28, 28))
class MLP(nn.Module):
    """Flatten, then ``Linear (→ BatchNorm1d) → activation (→ Dropout)`` per hidden width, then a linear classifier.

    The input features are ``prod(input_shape)``, so images and 1-D signals both work. Hidden layers are
    ``hidden.0``, ``hidden.1``… (each a ``Sequential`` of linear, ReLU and, if ``dropout > 0``, dropout);
    the classifier is ``head``.

    Args:
        num_classes: number of output logits.
        input_shape: input without the batch dimension, e.g. ``(1, 28, 28)`` or ``(1, 40)``.
        hidden: widths of the hidden layers; ``()`` gives a linear classifier.
        dropout: dropout probability after each hidden activation, in ``[0, 1)``.
        activation: ``relu``, or ``hardtanh`` (BinaryNet's, arXiv 1602.02830: signed activations for a sign
            quantizer).
        batch_norm: a ``BatchNorm1d`` after each hidden linear (as the binary-network papers' MLPs).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"mlp needs an input_shape of positive sizes, at least (1,); got {shape}")
        widths = [int(w) for w in hidden]
        if any(w < 1 for w in widths):
            raise ValueError(f"mlp hidden widths must be positive integers; got {tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"mlp dropout must be in [0, 1); got {dropout}")
        activations = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh}
        if activation not in activations:
            raise ValueError(f"mlp activation must be one of {sorted(activations)}; got {activation!r}")
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        in_features = math.prod(shape)
        for width in widths:
            block: list[nn.Module] = [nn.Linear(in_features, width)]
            if batch_norm:
                block.append(nn.BatchNorm1d(width))
            block.append(activations[activation]())
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            in_features = width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(x)))
