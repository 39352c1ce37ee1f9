"""What every distillation loss term sees and declares: inputs, layer pairs, weight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["DistillationInputs", "DistillationLoss", "parse_pairs"]


@dataclass
class DistillationInputs:
    """One batch as a loss term sees it.

    Attributes:
        student_logits: ``(N, K)`` logits of the student.
        teacher_logits: ``(N, K)`` logits of the teacher (computed without gradient).
        targets: ``(N,)`` class indices.
        student_features: outputs of the student's hooked modules, by module path.
        teacher_features: outputs of the teacher's hooked modules, by module path.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    targets: Tensor
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)


def parse_pairs(pairs: Any, what: str) -> tuple[tuple[str, str], ...]:
    """Normalize layer pairs to ``((student path, teacher path), ...)``.

    Accepted: a mapping ``{student path: teacher path}``, a sequence of 2-item sequences
    ``[[student path, teacher path], ...]``, or a sequence whose string items name the same path in both
    networks.

    Raises:
        ValueError: no pair, or an item that is not a path or a pair of paths.
    """
    if isinstance(pairs, Mapping):
        items: list[Any] = [(k, v) for k, v in pairs.items()]
    elif isinstance(pairs, Sequence) and not isinstance(pairs, str):
        items = list(pairs)
    else:
        raise ValueError(
            f"{what}: `pairs` must be a mapping {{student path: teacher path}} or a list of "
            f"[student path, teacher path] pairs, got {type(pairs).__name__} {pairs!r}"
        )
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, item))
        elif isinstance(item, Sequence) and len(item) == 2 and all(isinstance(p, str) for p in item):
            out.append((str(item[0]), str(item[1])))
        else:
            raise ValueError(
                f"{what}: each pair must be [student path, teacher path] (or one path for both), got {item!r}"
            )
    if not out:
        raise ValueError(f"{what}: needs at least one [student path, teacher path] pair, got {pairs!r}")
    return tuple(out)


class DistillationLoss(nn.Module):
    """Base of the loss terms a ``DistillationModule`` sums: ``total = Σ weight_i · term_i``.

    A subclass computes its term from a :class:`DistillationInputs` in ``forward`` and declares which module
    outputs it reads (``student_layers`` / ``teacher_layers``, module paths); the caller captures those by
    forward hooks. Subclasses that hold parameters (FitNets' regressors) are trained with the student.

    Args:
        weight: factor of this term in the total loss (``>= 0``).
    """

    #: short name, used in logs (``train/loss_<name>``) when the caller gives none
    name: ClassVar[str] = "distill"
    #: the term already contains a hard-label cross-entropy (KD's ``(1 − α)·CE``)
    includes_hard_labels: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not float(weight) >= 0.0:
            raise ValueError(f"{type(self).__name__}: `weight` must be >= 0, got {weight}")
        self.weight = float(weight)
        #: epochs of a hints-only first stage (FitNets); 0 = the term is summed from the first epoch
        self.stage1_epochs = 0

    @property
    def student_layers(self) -> tuple[str, ...]:
        """Module paths of the student whose outputs this term reads."""
        return ()

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        """Module paths of the teacher whose outputs this term reads."""
        return ()

    def forward(self, inputs: DistillationInputs) -> Tensor:
        """The unweighted term for one batch."""
        raise NotImplementedError
