"""DARTS genotypes: a discrete cell as plain data, its derivation from the architecture weights α, and
random cells from the same space (Liu et al. 2019, arXiv 1806.09055, §2.4).

A cell has 2 input states (the outputs of the two previous cells, states 0 and 1) and ``n`` intermediate
nodes (states 2 … n+1). A genotype lists, for every node in order, its two incoming edges as
``(operation, input state)`` pairs — ``normal[2i]`` and ``normal[2i+1]`` feed node ``i`` — plus the states
concatenated into the cell's output (``*_concat``; all intermediate nodes in DARTS).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from effdl_lightning.core.nas.darts_ops import DARTS_OPS, check_ops

__all__ = [
    "DARTS_V2",
    "Genotype",
    "derive_cell",
    "derive_genotype",
    "num_edges",
    "random_genotype",
]

Edge = tuple[str, int]


def num_edges(nodes: int) -> int:
    """Edges of a search cell with ``nodes`` intermediate nodes: node ``i`` has ``i + 2`` inputs."""
    return sum(i + 2 for i in range(nodes))


def _check_cell(kind: str, edges: Sequence[Edge], concat: Sequence[int]) -> None:
    if len(edges) < 2 or len(edges) % 2:
        raise ValueError(f"`{kind}` needs 2 edges per node (an even count >= 2), got {len(edges)} edges")
    nodes = len(edges) // 2
    for k, (op, src) in enumerate(edges):
        if op not in DARTS_OPS:
            raise ValueError(f"`{kind}` edge {k}: unknown operation {op!r}; allowed: {list(DARTS_OPS)}")
        if not 0 <= src < k // 2 + 2:
            raise ValueError(
                f"`{kind}` edge {k} feeds node {k // 2}, whose inputs are states 0..{k // 2 + 1}; got {src}"
            )
    if not concat or any(not 0 <= c < nodes + 2 for c in concat):
        raise ValueError(f"`{kind}_concat` must list states in 0..{nodes + 1}, got {list(concat)}")


@dataclass
class Genotype:
    """A discrete DARTS cell pair: the normal and the reduction cell (see the module docstring).

    Attributes:
        normal: ``(operation, input state)`` per edge of the normal cell, two per node.
        normal_concat: states concatenated into the normal cell's output.
        reduce: the same for the reduction cell (edges from states 0 and 1 have stride 2).
        reduce_concat: states concatenated into the reduction cell's output.
    """

    normal: list[Edge]
    normal_concat: list[int]
    reduce: list[Edge]
    reduce_concat: list[int]

    def __post_init__(self) -> None:
        self.normal = [(str(op), int(src)) for op, src in self.normal]
        self.reduce = [(str(op), int(src)) for op, src in self.reduce]
        self.normal_concat = [int(c) for c in self.normal_concat]
        self.reduce_concat = [int(c) for c in self.reduce_concat]
        _check_cell("normal", self.normal, self.normal_concat)
        _check_cell("reduce", self.reduce, self.reduce_concat)
        if len(self.normal) != len(self.reduce):
            raise ValueError(
                f"normal and reduce cells need the same number of nodes, got {len(self.normal) // 2} "
                f"and {len(self.reduce) // 2}"
            )

    @property
    def nodes(self) -> int:
        """Intermediate nodes per cell."""
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, strings, ints) for JSON/YAML and checkpoints."""
        return {
            "normal": [[op, src] for op, src in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, src] for op, src in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Inverse of :meth:`to_dict` (tuples or lists; ``*_concat`` default: all intermediate nodes)."""
        missing = {"normal", "reduce"} - set(data)
        if missing:
            raise ValueError(f"a genotype needs the keys 'normal' and 'reduce'; missing {sorted(missing)}")
        extra = set(data) - {"normal", "normal_concat", "reduce", "reduce_concat"}
        if extra:
            raise ValueError(
                f"unknown genotype key(s) {sorted(extra)}; allowed: normal, normal_concat, reduce, reduce_concat"
            )
        normal = [(str(e[0]), int(e[1])) for e in data["normal"]]
        reduce = [(str(e[0]), int(e[1])) for e in data["reduce"]]
        default = list(range(2, len(normal) // 2 + 2))
        return cls(
            normal=normal,
            normal_concat=list(data.get("normal_concat") or default),
            reduce=reduce,
            reduce_concat=list(data.get("reduce_concat") or list(range(2, len(reduce) // 2 + 2))),
        )

    def save(self, path: str | Path) -> Path:
        """Write the genotype as JSON (``.json``) or YAML (``.yaml``/``.yml``); return the path."""
        path = Path(path)
        text = _dump(self.to_dict(), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: a reader never sees a half-written file
        return path

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read a genotype written by :meth:`save` (or by hand) from JSON or YAML."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"genotype file {path} not found")
        suffix = _suffix(path)
        text = path.read_text()
        data = json.loads(text) if suffix == ".json" else _yaml().safe_load(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path} does not hold a genotype mapping (got {type(data).__name__})")
        return cls.from_dict(data)

    def __str__(self) -> str:
        def cell(edges: list[Edge]) -> str:
            return " | ".join(
                f"{a[0]}<-{a[1]}, {b[0]}<-{b[1]}" for a, b in zip(edges[::2], edges[1::2], strict=True)
            )

        return f"normal: {cell(self.normal)}; reduce: {cell(self.reduce)}"


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"genotype files are .json, .yaml or .yml; got {path.name!r}")
    return suffix


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as err:  # PyYAML comes with Hydra/OmegaConf; only the bare core lacks it
        raise ImportError("reading or writing a YAML genotype needs PyYAML (pip install pyyaml)") from err
    return yaml


def _dump(data: dict[str, Any], path: Path) -> str:
    if _suffix(path) == ".json":  # one key per line, each value on one line
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
        return "{\n" + body + "\n}\n"
    return str(_yaml().safe_dump(data, default_flow_style=None, sort_keys=False))


#: DARTS (second order) on CIFAR-10, the cell of the paper's Figures 4-5 (``DARTS_V2`` of the reference code)
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)


def derive_cell(alpha: Tensor, ops: Sequence[str]) -> list[Edge]:
    """Discretize one cell's α (``(edges, len(ops))``) by the paper's rule (§2.4).

    Weights are ``softmax(α)`` per edge. For every node, the incoming edges are ranked by their strongest
    operation other than ``none``; the top 2 are kept, each with that operation (ties: the lower input
    state first). ``none`` is never chosen.
    """
    ops = check_ops(ops)
    if alpha.ndim != 2 or alpha.shape[1] != len(ops):
        raise ValueError(
            f"α must have shape (edges, {len(ops)}) for ops {list(ops)}, got {tuple(alpha.shape)}"
        )
    nodes = 0
    while num_edges(nodes) < alpha.shape[0]:
        nodes += 1
    if num_edges(nodes) != alpha.shape[0] or nodes < 2:
        raise ValueError(f"{alpha.shape[0]} edges is not a cell of >= 2 nodes (2+3+4+... edges)")
    weights = torch.softmax(alpha.detach().double(), dim=-1).cpu()
    allowed = torch.tensor([o != "none" for o in ops])
    masked = weights.masked_fill(~allowed, -1.0)
    best_w, best_op = masked.max(dim=-1)
    gene: list[Edge] = []
    start = 0
    for i in range(nodes):
        rows = range(start, start + i + 2)
        # stable sort: on equal strength the lower input state wins (as in the reference code)
        top = sorted(rows, key=lambda r: -float(best_w[r]))[:2]
        gene += [(ops[int(best_op[r])], r - start) for r in top]
        start += i + 2
    return gene


def derive_genotype(alphas: Sequence[Tensor], ops: Sequence[str]) -> Genotype:
    """The genotype of ``(α_normal, α_reduce)``: :func:`derive_cell` of each, all nodes concatenated."""
    if len(alphas) != 2:
        raise ValueError(f"expected (alpha_normal, alpha_reduce), got {len(alphas)} tensors")
    normal, reduce = derive_cell(alphas[0], ops), derive_cell(alphas[1], ops)
    concat = list(range(2, len(normal) // 2 + 2))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=list(concat))


def random_genotype(
    rng: random.Random | int | None, nodes: int, ops: Sequence[str] | None = None
) -> Genotype:
    """A cell pair drawn uniformly from the space :func:`derive_genotype` produces.

    Per node: 2 distinct input states uniformly among its ``i + 2``, and for each an operation uniformly
    among ``ops`` without ``none``; both cells drawn independently (the random-search baseline of §3.3).

    Args:
        rng: a ``random.Random`` or a seed.
        nodes: intermediate nodes per cell (>= 2).
        ops: the operation set (default: :data:`DARTS_OPS`).
    """
    if int(nodes) < 2:
        raise ValueError(f"`nodes` must be >= 2, got {nodes}")
    choices = [o for o in check_ops(ops) if o != "none"]
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)

    def cell() -> list[Edge]:
        gene: list[Edge] = []
        for i in range(int(nodes)):
            for src in sorted(rng.sample(range(i + 2), 2)):
                gene.append((rng.choice(choices), src))
        return gene

    concat = list(range(2, int(nodes) + 2))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=list(concat))
