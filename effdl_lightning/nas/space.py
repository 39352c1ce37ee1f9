"""From an :class:`~effdl_lightning.core.nas.mnas.Architecture` to a network of ``model=mnas_space``.

The search space's *choices* live in :mod:`effdl_lightning.core.nas.mnas` (plain data, no model code); the
*skeleton* (stem, stage channels and strides, head) is the ``model=mnas_space`` network
(:class:`effdl_lightning.models.MnasSpaceNet`). :class:`CandidateBuilder` joins them: it holds the skeleton
and builds, plans or describes a candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from effdl_lightning.core.nas.mnas import Architecture, SearchSpace
from effdl_lightning.models.mnas_space import DEFAULT_CHANNELS, MnasSpaceNet, PlannedBlock, plan_mnas_space

#: ``MnasSpaceNet`` arguments that are the skeleton (everything but the stages and the data's shape)
SKELETON_KEYS = (
    "stem_channels",
    "stem_stride",
    "channels",
    "strides",
    "head_channels",
    "se_ratio",
    "act",
    "dropout",
    "zero_init_residual",
)
#: what fixes the network's *structure* (the latency table's blocks): the skeleton minus act, dropout, init
_PLAN_KEYS = ("stem_channels", "stem_stride", "channels", "strides", "head_channels", "se_ratio")
MNAS_SPACE_TARGET = "effdl_lightning.models.MnasSpaceNet"


@dataclass(frozen=True)
class CandidateBuilder:
    """Builds the candidates of a search: the data's shape and classes plus the skeleton of ``mnas_space``.

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)`` of the data.
        skeleton: :class:`~effdl_lightning.models.MnasSpaceNet` arguments of :data:`SKELETON_KEYS`
            (defaults where missing).
    """

    num_classes: int = 10
    input_shape: tuple[int, ...] = (1, 28, 28)
    skeleton: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.skeleton) - set(SKELETON_KEYS))
        if unknown:
            raise ValueError(f"unknown skeleton argument(s) {unknown}; allowed: {list(SKELETON_KEYS)}")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "skeleton", dict(self.skeleton))

    @classmethod
    def from_model_config(cls, node: Mapping[str, Any]) -> CandidateBuilder:
        """The builder of a resolved ``model=mnas_space`` config (``_target_`` must be :data:`MNAS_SPACE_TARGET`)."""
        target = node.get("_target_")
        if target != MNAS_SPACE_TARGET:
            raise ValueError(
                f"the platform-aware search builds its candidates from model=mnas_space ({MNAS_SPACE_TARGET}); "
                f"got model._target_={target!r}"
            )
        return cls(
            num_classes=int(node["num_classes"]),
            input_shape=tuple(node["input_shape"]),
            skeleton={k: node[k] for k in SKELETON_KEYS if k in node},
        )

    @property
    def num_stages(self) -> int:
        return len(self.skeleton.get("channels", DEFAULT_CHANNELS))

    def check_space(self, space: SearchSpace) -> None:
        """``ValueError`` unless ``space`` has one stage per skeleton stage."""
        if space.num_stages != self.num_stages:
            raise ValueError(
                f"the search space has {space.num_stages} stages but the skeleton has {self.num_stages} "
                f"(model.channels={list(self.skeleton.get('channels', ()))})"
            )

    def plan(self, arch: Architecture | Mapping[str, Any] | Sequence[Any]) -> list[PlannedBlock]:
        """Stem, every layer and the head of ``arch``, with their input shapes (the latency table's keys)."""
        stages = arch.to_dict() if isinstance(arch, Architecture) else arch
        kwargs = {k: v for k, v in self.skeleton.items() if k in _PLAN_KEYS}
        return plan_mnas_space(stages, self.input_shape, **kwargs)

    def build(self, arch: Architecture | Mapping[str, Any] | Sequence[Any]) -> MnasSpaceNet:
        """The network of ``arch`` (freshly initialized)."""
        stages = arch.to_dict() if isinstance(arch, Architecture) else arch
        return MnasSpaceNet(
            num_classes=self.num_classes, input_shape=self.input_shape, stages=stages, **self.skeleton
        )

    def block_keys(self, space: SearchSpace) -> dict[str, PlannedBlock]:
        """Every planned part any architecture of ``space`` can contain, by key.

        A stage's layers depend only on its own choice and the width of the stage before it (resolutions
        are fixed by the skeleton), so one architecture per (stage, previous width, stage choice) covers
        the space: ``num_stages · |widths|² · |kernels| · |expansions| · |se|`` plans.
        """
        deepest = max(space.layers)
        base = {f: space.choices(f)[0] for f in ("kernel", "expansion", "se", "layers", "width")}
        found: dict[str, PlannedBlock] = {}
        for stage in range(space.num_stages):
            for prev_width in space.widths:
                for kernel in space.kernels:
                    for expansion in space.expansions:
                        for se in space.se:
                            for width in space.widths:
                                stages = [dict(base) for _ in range(space.num_stages)]
                                if stage > 0:
                                    stages[stage - 1]["width"] = prev_width
                                stages[stage].update(
                                    kernel=kernel, expansion=expansion, se=se, layers=deepest, width=width
                                )
                                for block in self.plan(stages):
                                    found.setdefault(block.key, block)
        return found


def build_candidate(
    arch: Architecture | Mapping[str, Any],
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    **skeleton: Any,
) -> MnasSpaceNet:
    """Build the ``model=mnas_space`` network of ``arch`` (``skeleton``: :data:`SKELETON_KEYS` arguments)."""
    return CandidateBuilder(num_classes, tuple(input_shape), skeleton).build(arch)
