"""A network built from a DARTS genotype, for retraining a searched cell (Liu et al. 2019, arXiv 1806.09055, §3.2).

The network stacks ``layers`` cells (reductions at 1/3 and 2/3 of the depth, channels doubling there) after a
3×3 conv stem. Each cell preprocesses its two inputs (``ReLU → 1×1 conv → BN``, or a factorized reduction
after a reduction cell), computes every node as the sum of its two genotype edges (operation on an earlier
state; stride 2 on the inputs of a reduction cell) and concatenates the ``*_concat`` states. Optional drop-path
zeroes a whole non-identity edge per sample in training (scaled by ``1/(1-p)``), and an auxiliary classifier
on the cell at 2/3 of the depth helps training (the paper retrains with both).

``python train.py model=darts_genotype model.genotype=<genotype.json>`` retrains a cell found by
``DartsSearchModule`` with the ordinary ``ClassificationModule``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.nas.darts import reduction_layers
from effdl_lightning.core.nas.darts_genotype import DARTS_V2, Genotype
from effdl_lightning.core.nas.darts_ops import FactorizedReduce, ReLUConvBN, build_op
from effdl_lightning.models.registry import register_model

__all__ = ["DartsNetwork", "as_genotype", "darts_genotype"]

GenotypeLike = Genotype | Mapping[str, Any] | str | os.PathLike[str]


def as_genotype(genotype: GenotypeLike | None) -> Genotype:
    """A :class:`Genotype` from a genotype, its dict, or the path of its JSON/YAML file; ``None`` = DARTS_V2."""
    if genotype is None:
        return DARTS_V2
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, Mapping):
        return Genotype.from_dict(genotype)
    if isinstance(genotype, str | os.PathLike):
        return Genotype.load(os.fspath(genotype))
    raise TypeError(
        f"`genotype` must be a Genotype, a dict or the path of a .json/.yaml file, got {type(genotype).__name__}"
    )


def drop_path(x: Tensor, p: float) -> Tensor:
    """Zero whole samples of ``x`` with probability ``p``, scale the kept ones by ``1/(1-p)``."""
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class Cell(nn.Module):
    """One discrete cell of a genotype (normal or reduction)."""

    def __init__(
        self,
        edges: Sequence[tuple[str, int]],
        concat: Sequence[int],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0)
        self.sources = [int(src) for _, src in edges]
        self.concat = [int(c) for c in concat]
        self.ops = nn.ModuleList(
            build_op(op, channels, 2 if reduction and src < 2 else 1) for op, src in edges
        )
        self.multiplier = len(self.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            node = None
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.sources[k]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            assert node is not None
            states.append(node)
        return torch.cat([states[c] for c in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The paper's auxiliary classifier: ``ReLU → avg-pool to 2×2 → 1×1 conv 128 → BN → ReLU → 2×2 conv 768 →
    BN → ReLU → linear``. The reference pools 8×8 maps with a 5×5/stride-3 window; an adaptive pool to 2×2
    gives the same output size on any input size."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """The network of a DARTS genotype (module docstring).

    Args:
        genotype: a :class:`~effdl_lightning.core.nas.Genotype`, its ``to_dict()``, or the path of a file
            written by ``Genotype.save`` / ``DartsSearchModule`` (JSON or YAML); ``None`` = the paper's DARTS
            (second order) CIFAR-10 cell.
        C: channels of the first cells' nodes (36 in the paper's CIFAR-10 retraining).
        num_classes: classifier outputs.
        layers: number of cells (20 in the paper's retraining).
        in_channels: input channels; any spatial size works.
        drop_path_prob: drop-path probability of each non-identity edge in training (the paper ramps it
            linearly to 0.2 over the epochs; here it is constant).
        auxiliary: add the auxiliary classifier. The forward then returns ``[aux_logits, logits]`` (in
            training and evaluation), which ``EarlyExitModule`` trains as two exits (e.g. ``exit_weights:
            [0.4, 1.0]``, the paper's weight); ``ClassificationModule`` needs ``auxiliary=False``.
        stem_multiplier: the stem outputs ``stem_multiplier · C`` channels (3 in the paper).
    """

    def __init__(
        self,
        genotype: GenotypeLike | None = None,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        in_channels: int = 3,
        drop_path_prob: float = 0.0,
        auxiliary: bool = False,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("C", C, 1),
            ("num_classes", num_classes, 2),
            ("layers", layers, 1),
            ("in_channels", in_channels, 1),
            ("stem_multiplier", stem_multiplier, 1),
        ):
            if int(value) < low:
                raise ValueError(f"`{name}` must be >= {low}, got {value}")
        if not 0.0 <= float(drop_path_prob) < 1.0:
            raise ValueError(f"`drop_path_prob` must be in [0, 1), got {drop_path_prob}")
        self.genotype = as_genotype(genotype)
        self.drop_path_prob = float(drop_path_prob)
        self.auxiliary = bool(auxiliary)
        c_curr = int(stem_multiplier) * int(C)
        self.stem = nn.Sequential(
            nn.Conv2d(int(in_channels), c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, int(C)
        reductions = reduction_layers(int(layers))
        self.aux_index = 2 * int(layers) // 3
        self.cells = nn.ModuleList()
        reduction_prev = False
        c_aux = c_prev
        g = self.genotype
        for i in range(int(layers)):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            edges, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
            cell = Cell(edges, concat, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_index:
                c_aux = c_prev
        self.aux_head = AuxiliaryHead(c_aux, int(num_classes)) if self.auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, int(num_classes))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        s0 = s1 = self.stem(x)
        aux: Tensor | None = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.aux_head is not None:
                aux = self.aux_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits if aux is None else [aux, logits]


@register_model(
    "darts_genotype",
    default_input_shape=(1, 28, 28),
    default_num_classes=10,
    test_kwargs={"C": 4, "layers": 3},
)
def darts_genotype(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    genotype: GenotypeLike | None = None,
    C: int = 16,
    layers: int = 8,
    drop_path_prob: float = 0.0,
    auxiliary: bool = False,
) -> DartsNetwork:
    """:class:`DartsNetwork` with the registry's common keywords (``input_shape`` sets the input channels)."""
    return DartsNetwork(
        genotype,
        C=C,
        num_classes=num_classes,
        layers=layers,
        in_channels=int(input_shape[0]),
        drop_path_prob=drop_path_prob,
        auxiliary=auxiliary,
    )
