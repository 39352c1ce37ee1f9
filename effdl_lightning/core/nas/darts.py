"""The DARTS search space: mixed operations, search cells and the over-parameterized network
(Liu et al. 2019, "DARTS: Differentiable Architecture Search", arXiv 1806.09055, §2.1-2.2).

Every edge ``(i, j)`` of a cell carries all candidate operations at once, mixed by the softmax of its
architecture weights: ``ō(x) = Σ_o softmax(α_(i,j))_o · o(x)``. A node sums its incoming edges; the cell
outputs the concatenation of its intermediate nodes. All normal cells share ``α_normal`` and all reduction
cells ``α_reduce``; those two tensors are the architecture, kept apart from the weights
(:meth:`DartsSearchNetwork.arch_parameters` / :meth:`~DartsSearchNetwork.weight_parameters`) so that a
bilevel optimizer updates them with their own optimizer (see :mod:`effdl_lightning.core.nas.darts_architect`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from effdl_lightning.core.nas.darts_genotype import Genotype, derive_genotype, num_edges
from effdl_lightning.core.nas.darts_ops import FactorizedReduce, ReLUConvBN, build_op, check_ops

__all__ = ["DartsSearchNetwork", "MixedOp", "SearchCell", "reduction_layers"]


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells among ``layers`` cells: at 1/3 and 2/3 of the depth (as in DARTS)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


class MixedOp(nn.Module):
    """All operations of one edge, mixed: ``Σ_o w_o · o(x)`` with ``w = softmax(α_edge)`` given by the cell.

    ``none`` (the zero op) is not computed: its term is 0 and contributes nothing to the output or to any
    gradient (α_none still acts through the softmax's normalization of the other weights). Pooling ops are
    followed by a BN without affine parameters, as in the reference search code.
    """

    def __init__(self, channels: int, stride: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.op_names = check_ops(ops)
        self.ops = nn.ModuleDict()
        for name in self.op_names:
            if name == "none":
                continue
            op = build_op(name, channels, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops[name] = op

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        if weights.shape != (len(self.op_names),):
            raise ValueError(
                f"expected {len(self.op_names)} weights (one per op), got {tuple(weights.shape)}"
            )
        out: Tensor | None = None
        for k, name in enumerate(self.op_names):
            if name == "none":
                continue
            term = weights[k] * self.ops[name](x)
            out = term if out is None else out + term
        assert out is not None  # check_ops guarantees one op besides none
        return out


class SearchCell(nn.Module):
    """A search cell: 2 inputs (preprocessed by ``ReLU → 1×1 conv → BN``, or a factorized reduction when the
    previous cell halved the size), ``nodes`` intermediate nodes, each the sum of a :class:`MixedOp` on every
    earlier state; output = the intermediate nodes concatenated (``nodes · C`` channels).

    Args:
        nodes: intermediate nodes.
        c_prev_prev: channels of input state 0 (the cell two back).
        c_prev: channels of input state 1 (the previous cell).
        channels: ``C`` of this cell's nodes.
        reduction: a reduction cell (the edges from the inputs have stride 2).
        reduction_prev: the previous cell was a reduction (state 0 is at twice the size).
        ops: the operation set.
    """

    def __init__(
        self,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        ops: Sequence[str],
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(channels, 2 if reduction and j < 2 else 1, ops)
            for i in range(nodes)
            for j in range(i + 2)
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)


class DartsSearchNetwork(nn.Module):
    """The over-parameterized DARTS network: a 3×3 conv stem, ``layers`` search cells (reductions at 1/3 and
    2/3 of the depth, where the channels double), global average pooling and a linear classifier.

    Args:
        C: channels of the first cells' nodes (16 in the paper's CIFAR-10 search).
        num_classes: classifier outputs.
        layers: number of cells (8 in the paper's search).
        nodes: intermediate nodes per cell (>= 2; 4 in the paper).
        ops: the candidate operations (default: all 8 of the paper, see ``DARTS_OPS``).
        in_channels: input channels (1 for MNIST, 3 for CIFAR); any spatial size works.
        stem_multiplier: the stem outputs ``stem_multiplier · C`` channels (3 in the paper).
    """

    def __init__(
        self,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        nodes: int = 4,
        ops: Sequence[str] | None = None,
        in_channels: int = 3,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("C", C, 1),
            ("num_classes", num_classes, 2),
            ("layers", layers, 1),
            ("nodes", nodes, 2),
            ("in_channels", in_channels, 1),
            ("stem_multiplier", stem_multiplier, 1),
        ):
            if int(value) < low:
                raise ValueError(f"`{name}` must be >= {low}, got {value}")
        self.ops = check_ops(ops)
        self.C, self.num_classes, self.layers, self.nodes = int(C), int(num_classes), int(layers), int(nodes)
        self.in_channels, self.stem_multiplier = int(in_channels), int(stem_multiplier)
        c_curr = self.stem_multiplier * self.C
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, self.C
        reductions = reduction_layers(self.layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            self.cells.append(
                SearchCell(self.nodes, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, self.ops)
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, self.nodes * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, self.num_classes)
        shape = (num_edges(self.nodes), len(self.ops))
        # small random α (1e-3·N(0, 1), as in the reference code): near-uniform mixing, ties broken at random
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture: ``[α_normal, α_reduce]``, each ``(edges, len(ops))``."""
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the architecture's (the network weights ``w``)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of :meth:`weight_parameters`."""
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def arch_weights(self) -> tuple[Tensor, Tensor]:
        """``(softmax(α_normal), softmax(α_reduce))`` per edge."""
        return torch.softmax(self.alpha_normal, dim=-1), torch.softmax(self.alpha_reduce, dim=-1)

    def genotype(self) -> Genotype:
        """The discrete cell pair the current α give (top-2 incoming edges per node, never ``none``)."""
        return derive_genotype(self.arch_parameters(), self.ops)

    def forward(self, x: Tensor) -> Tensor:
        w_normal, w_reduce = self.arch_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))
