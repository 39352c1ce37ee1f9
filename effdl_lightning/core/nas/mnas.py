"""Platform-aware search (MnasNet, Tan et al., arXiv 1807.11626): the factorized space and the reward.

**Search space.** MnasNet's *factorized hierarchical* space fixes a skeleton of stages (input resolution
and base filters per stage) and lets every stage choose its own layer; all layers of one stage are the same.
Here each stage chooses

* ``kernel`` of the depthwise conv (default {3, 5}),
* ``expansion`` of the MBConv (default {1, 3, 6}; 1 = no expansion conv, i.e. a depthwise-separable layer),
* ``se``: squeeze-and-excite or not (MnasNet's SE ratio {0, 0.25}),
* ``layers`` in the stage (default {1, 2, 3}),
* ``width``: multiplier of the stage's base filters (default {1.0}, i.e. fixed; MnasNet searches it too).

A space of ``S`` stages with ``c`` combinations per stage has ``c^S`` architectures (default 36⁴ ≈ 1.7M).
An :class:`Architecture` is plain data (a dict ``{"s1": {...}, ...}``, JSON) — exactly the ``stages``
argument of :class:`effdl_lightning.models.MnasSpaceNet` (``model=mnas_space``), which builds it with the
skeleton (stem, stage channels and strides, head); :func:`effdl_lightning.nas.build_candidate` does it from an
``Architecture``. (The network lives in ``models/`` and the builder in ``nas/``: ``core`` imports only torch.)

**Reward** (Eq. 2 of the paper): ``ACC(m) · (LAT(m) / T)^w`` with ``w = α`` if ``LAT(m) ≤ T`` else ``β``.
*Soft* constraint: ``α = β = −0.07`` (the paper's choice: doubling latency should be worth a 5% relative
accuracy gain, ``2^−0.07 ≈ 1/1.05``). *Hard* constraint: ``α = 0, β = −1`` (plain accuracy below the target,
a steep penalty above it).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: the factors each stage chooses, in the order of a stage's decisions
FACTORS = ("kernel", "expansion", "se", "layers", "width")
#: (α, β) of the paper's two constraints
SOFT = (-0.07, -0.07)
HARD = (0.0, -1.0)


def reward(
    acc: float, latency: float, target: float, alpha: float = SOFT[0], beta: float | None = None
) -> float:
    """MnasNet's multi-objective reward ``acc · (latency / target)^w``, ``w = alpha`` if ``latency ≤ target``.

    Args:
        acc: accuracy of the candidate (≥ 0).
        latency: its latency (> 0), in the units of ``target``.
        target: the target latency ``T`` (> 0).
        alpha: exponent when the target is met (soft constraint: −0.07; hard: 0).
        beta: exponent when it is missed (soft: −0.07; hard: −1); ``None`` uses ``alpha``.
    """
    if not acc >= 0:
        raise ValueError(f"acc must be >= 0; got {acc}")
    if not latency > 0:
        raise ValueError(f"latency must be > 0; got {latency}")
    if not target > 0:
        raise ValueError(f"target must be > 0; got {target}")
    beta = alpha if beta is None else beta
    w = alpha if latency <= target else beta
    return float(acc * (latency / target) ** w)


def _number(value: float) -> int | float:
    """An int when integral (so that dicts and YAML read ``6``, not ``6.0``)."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class StageChoice:
    """The layer of one stage: depthwise ``kernel``, MBConv ``expansion``, ``se``, ``layers``, ``width``."""

    kernel: int
    expansion: float
    se: bool
    layers: int
    width: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": int(self.kernel),
            "expansion": _number(self.expansion),
            "se": bool(self.se),
            "layers": int(self.layers),
            "width": float(self.width),
        }

    @property
    def token(self) -> str:
        """A short name, e.g. ``k5e3se1l2w1``."""
        return f"k{self.kernel}e{self.expansion:g}se{int(self.se)}l{self.layers}w{self.width:g}"


@dataclass(frozen=True)
class Architecture:
    """One point of the space: a :class:`StageChoice` per stage. Plain data; ``to_dict``/``from_dict``."""

    stages: tuple[StageChoice, ...]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"s1": {...}, ..., "sN": {...}}``: the ``stages`` of ``model=mnas_space``."""
        return {f"s{i + 1}": stage.to_dict() for i, stage in enumerate(self.stages)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[Any]) -> Architecture:
        """Read :meth:`to_dict`'s output (or a list of stage dicts); every field of :data:`FACTORS` but
        ``width`` (default 1.0) is required."""
        if isinstance(data, Mapping):
            keys = [f"s{i + 1}" for i in range(len(data))]
            if sorted(data) != sorted(keys):
                raise ValueError(f"an architecture's stages must be named {keys}; got {sorted(data)}")
            items = [data[k] for k in keys]
        else:
            items = list(data)
        stages = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ValueError(f"stage s{i + 1} must be a mapping of {list(FACTORS)}; got {item!r}")
            missing = [f for f in FACTORS[:-1] if f not in item]
            unknown = sorted(set(item) - set(FACTORS))
            if missing or unknown:
                raise ValueError(
                    f"stage s{i + 1}: missing {missing}, unknown {unknown}; expected the fields {list(FACTORS)}"
                )
            stages.append(
                StageChoice(
                    kernel=int(item["kernel"]),
                    expansion=float(item["expansion"]),
                    se=bool(item["se"]),
                    layers=int(item["layers"]),
                    width=float(item.get("width", 1.0)),
                )
            )
        return cls(tuple(stages))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))

    @property
    def key(self) -> str:
        """A short unique name, the stages' tokens joined by ``-``."""
        return "-".join(stage.token for stage in self.stages)


def _choices(name: str, values: Sequence[Any], check: Any, rule: str) -> tuple[Any, ...]:
    out = tuple(values)
    if not out:
        raise ValueError(f"{name} must list at least one choice; got {list(values)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a choice; got {list(values)}")
    bad = [v for v in out if not check(v)]
    if bad:
        raise ValueError(f"{name}: {bad} not allowed; every choice must be {rule}")
    return out


@dataclass(frozen=True)
class SearchSpace:
    """The factorized space: ``num_stages`` stages, each choosing one value of every factor.

    Args:
        num_stages: stages of the skeleton (four in ``model=mnas_space``).
        kernels: depthwise kernel sizes (positive odd integers).
        expansions: MBConv expansion ratios (≥ 1).
        se: whether a stage may use squeeze-excite (``(False, True)``; ``(False,)`` removes SE).
        layers: layers per stage (≥ 1).
        widths: multipliers of each stage's base filters (> 0).
    """

    num_stages: int = 4
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[float, ...] = (1, 3, 6)
    se: tuple[bool, ...] = (False, True)
    layers: tuple[int, ...] = (1, 2, 3)
    widths: tuple[float, ...] = (1.0,)
    _decisions: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if int(self.num_stages) < 1:
            raise ValueError(f"num_stages must be >= 1; got {self.num_stages}")
        odd = "a positive odd integer"
        set_ = object.__setattr__
        set_(
            self, "kernels", _choices("kernels", self.kernels, lambda v: int(v) == v and v > 0 and v % 2, odd)
        )
        set_(self, "expansions", _choices("expansions", self.expansions, lambda v: v >= 1, ">= 1"))
        set_(self, "se", _choices("se", self.se, lambda v: isinstance(v, bool), "true or false"))
        set_(
            self,
            "layers",
            _choices("layers", self.layers, lambda v: int(v) == v and v >= 1, "an integer >= 1"),
        )
        set_(self, "widths", _choices("widths", self.widths, lambda v: v > 0, "> 0"))
        decisions = tuple(
            (stage, factor)
            for stage in range(self.num_stages)
            for factor in FACTORS
            if len(self.choices(factor)) > 1
        )
        set_(self, "_decisions", decisions)

    def choices(self, factor: str) -> tuple[Any, ...]:
        """The allowed values of ``factor`` (one of :data:`FACTORS`)."""
        options = {
            "kernel": self.kernels,
            "expansion": self.expansions,
            "se": self.se,
            "layers": self.layers,
            "width": self.widths,
        }
        if factor not in options:
            raise ValueError(f"unknown factor {factor!r}; expected one of {list(FACTORS)}")
        return options[factor]

    @property
    def decisions(self) -> tuple[tuple[int, str], ...]:
        """``(stage, factor)`` of every decision a policy makes, in order (factors with one choice are fixed)."""
        return self._decisions

    @property
    def num_choices(self) -> tuple[int, ...]:
        """Number of options of each decision, in the order of :attr:`decisions`."""
        return tuple(len(self.choices(factor)) for _, factor in self.decisions)

    @property
    def size(self) -> int:
        """Number of architectures in the space."""
        return math.prod(self.num_choices)

    def decode(self, indices: Sequence[int]) -> Architecture:
        """The architecture of one index per decision (:attr:`decisions`)."""
        if len(indices) != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} decisions; got {len(indices)}")
        picked: dict[tuple[int, str], Any] = {}
        for (stage, factor), index, n in zip(self.decisions, indices, self.num_choices, strict=True):
            if not 0 <= int(index) < n:
                raise ValueError(f"decision s{stage + 1}.{factor}: index {index} not in [0, {n})")
            picked[(stage, factor)] = self.choices(factor)[int(index)]
        stages = []
        for stage in range(self.num_stages):
            values = {f: picked.get((stage, f), self.choices(f)[0]) for f in FACTORS}
            stages.append(StageChoice(**values))
        return Architecture(tuple(stages))

    def encode(self, arch: Architecture) -> list[int]:
        """The decision indices of ``arch``; a value outside the space raises ``ValueError`` naming it."""
        self.validate(arch)
        return [self.choices(f).index(getattr(arch.stages[s], f)) for s, f in self.decisions]

    def validate(self, arch: Architecture) -> None:
        """Raise ``ValueError`` naming the stage, the value and the allowed set when ``arch`` is outside."""
        if len(arch.stages) != self.num_stages:
            raise ValueError(
                f"the space has {self.num_stages} stages; the architecture has {len(arch.stages)}"
            )
        for i, stage in enumerate(arch.stages):
            for factor in FACTORS:
                value, allowed = getattr(stage, factor), self.choices(factor)
                if value not in allowed:
                    raise ValueError(
                        f"stage s{i + 1}: {factor}={value!r} is not in the space; allowed: {list(allowed)}"
                    )

    def sample(self, generator: torch.Generator | None = None) -> Architecture:
        """An architecture drawn uniformly from the space (each decision uniform and independent)."""
        indices = [int(torch.randint(n, (1,), generator=generator)) for n in self.num_choices]
        return self.decode(indices)

    def uniform(self, stage: Mapping[str, Any]) -> Architecture:
        """The architecture with the same ``stage`` choices in every stage (e.g. a MobileNetV2-style one)."""
        arch = Architecture.from_dict([dict(stage)] * self.num_stages)
        return arch

    def __iter__(self) -> Iterator[Architecture]:
        """Every architecture (for small spaces: mind :attr:`size`)."""
        for indices in itertools.product(*(range(n) for n in self.num_choices)):
            yield self.decode(indices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_stages": self.num_stages,
            "kernels": list(self.kernels),
            "expansions": [_number(e) for e in self.expansions],
            "se": list(self.se),
            "layers": list(self.layers),
            "widths": list(self.widths),
        }
