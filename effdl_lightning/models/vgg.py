"""A small VGG-style CNN (Simonyan & Zisserman 2014, arXiv:1409.1556) for 28- and 32-pixel images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.registry import register_model

_CLASSIFIERS = ("avg", "flatten")


@register_model("vgg_small", default_input_shape=(3, 32, 32))
class VGGSmall(nn.Module):
    """VGG-style stack of 3×3 ``Conv → BatchNorm → ReLU`` layers and 2×2 max-pools, then a linear classifier.

    ``widths`` reads like VGG's configuration lists (arXiv:1409.1556, Table 1): an integer is a 3×3 conv
    (padding 1, no bias, followed by BatchNorm and ReLU) with that many output channels, ``"M"`` a 2×2
    max-pool. The convolutions are ``features.<i>`` (conv at ``i``, BN at ``i+1``); the classifier is
    ``head``. The input needs at least ``2**k`` pixels per side for ``k`` pools.

    Args:
        num_classes: number of output logits.
        input_shape: ``(channels, height, width)``.
        widths: layer list, e.g. ``(32, "M", 64, "M", 128, "M")``.
        classifier: ``"avg"`` (global average pool, then linear) or ``"flatten"`` (flatten the final
            feature map, then linear).
        dropout: dropout probability before the classifier, in ``[0, 1)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        widths: Sequence[int | str] = (32, "M", 64, "M", 128, "M"),
        classifier: str = "avg",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if classifier not in _CLASSIFIERS:
            raise ValueError(f"vgg_small classifier must be one of {_CLASSIFIERS}; got {classifier!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"vgg_small dropout must be in [0, 1); got {dropout}")
        if not any(isinstance(w, int) for w in widths) or any(
            (isinstance(w, str) and w != "M") or (isinstance(w, int) and w < 1) for w in widths
        ):
            raise ValueError(
                f"vgg_small widths must hold positive integers (conv widths) and 'M' (max-pool), with at "
                f"least one conv; got {tuple(widths)}"
            )
        pools = sum(1 for w in widths if w == "M")
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 2**pools:
            raise ValueError(
                f"vgg_small with {pools} max-pools needs input_shape (channels, height, width) with "
                f"channels >= 1 and height, width >= {2**pools}; got {shape}"
            )
        channels, height, width = shape
        layers: list[nn.Module] = []
        for w in widths:
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            else:
                out = int(w)
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if classifier == "avg" else nn.Identity()
        self.flatten = nn.Flatten()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        in_features = channels if classifier == "avg" else channels * height * width
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.head(self.dropout(x))
