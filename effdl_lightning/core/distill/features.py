"""Losses on intermediate features: FitNets hints (arXiv 1412.6550) and attention transfer (arXiv 1612.03928).

Both read module outputs named by path (see :mod:`effdl_lightning.core.distill.capture`) as
``[student path, teacher path]`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from effdl_lightning.core.distill.base import DistillationInputs, DistillationLoss, parse_pairs

__all__ = [
    "AttentionTransferLoss",
    "FitNetsLoss",
    "at_loss",
    "attention_map",
    "hint_loss",
    "make_regressor",
]

_REDUCTIONS = ("batchmean", "mean")
_ACTIVATIONS = (None, "relu")


def hint_loss(guided: Tensor, hint: Tensor, reduction: str = "batchmean") -> Tensor:
    """FitNets' hint loss (Romero et al. 2015, arXiv 1412.6550, Eq. 3) on already-regressed features.

    ``L_HT = ½ ‖u_h − r(v_g)‖²`` with ``u_h`` the teacher's hint and ``r(v_g)`` the regressed student guided
    layer (pass ``r(v_g)`` as ``guided``).

    Args:
        guided: ``r(v_g)``, shape ``(N, ...)``.
        hint: ``u_h``, the same shape (no gradient flows into it).
        reduction: ``batchmean``: the squared norm per example, averaged over the batch (the paper's
            per-example loss); ``mean``: additionally divided by the number of elements per example
            (``½ · MSE``, independent of the feature size).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"hint_loss: `reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    if guided.shape != hint.shape:
        raise ValueError(
            f"hint_loss: regressed guided features {tuple(guided.shape)} and hint {tuple(hint.shape)} differ"
        )
    squared = (guided - hint.detach()).pow(2)
    if reduction == "mean":
        return 0.5 * squared.mean()
    return 0.5 * squared.sum() / guided.shape[0]


def make_regressor(
    student_shape: Sequence[int], teacher_shape: Sequence[int], activation: str | None = None
) -> nn.Module:
    """The FitNets regressor ``r`` that maps a guided layer's output onto the hint's shape.

    Shapes are without the batch dimension. Equal shapes need no regressor (``nn.Identity``). ``(C,)``
    features get a ``Linear(C_s, C_t)``; ``(C, L)`` and ``(C, H, W)`` maps get a convolution without padding
    whose kernel ``L_s − L_t + 1`` (``H_s − H_t + 1`` × ``W_s − W_t + 1``) turns the student's spatial size into
    the teacher's, as in the paper's convolutional regressor (§2.2); equal sizes give a 1×1 convolution.

    Args:
        student_shape: shape of the guided layer's output.
        teacher_shape: shape of the hint layer's output.
        activation: ``None`` or ``"relu"`` after the regressor (the paper asks ``r`` to have the hint's
            non-linearity).

    Raises:
        ValueError: ranks differ, the student's map is smaller than the teacher's, or a rank other than
            1–3.
    """
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"make_regressor: `activation` must be one of {_ACTIVATIONS}, got {activation!r}")
    if s == t:
        return nn.Identity()
    if len(s) != len(t) or not 1 <= len(s) <= 3:
        raise ValueError(
            f"make_regressor: cannot map student features {s} onto teacher features {t}: both must be (C,), "
            f"(C, L) or (C, H, W) of the same rank"
        )
    if any(a < b for a, b in zip(s[1:], t[1:], strict=True)):
        raise ValueError(
            f"make_regressor: the student's spatial size {s[1:]} is smaller than the teacher's {t[1:]}; "
            "choose a guided layer at least as large as the hint layer"
        )
    layer: nn.Module
    if len(s) == 1:
        layer = nn.Linear(s[0], t[0])
    elif len(s) == 2:
        layer = nn.Conv1d(s[0], t[0], kernel_size=s[1] - t[1] + 1)
    else:
        layer = nn.Conv2d(s[0], t[0], kernel_size=(s[1] - t[1] + 1, s[2] - t[2] + 1))
    return layer if activation is None else nn.Sequential(layer, nn.ReLU())


class FitNetsLoss(DistillationLoss):
    """FitNets hints (Romero et al. 2015, arXiv 1412.6550): a student layer regresses a teacher layer.

    ``L_HT = Σ_pairs ½ ‖u_h − r(v_g)‖²`` with ``u_h`` the output of the teacher's *hint* layer, ``v_g`` that of
    the student's *guided* layer and ``r`` a regressor built by :meth:`build_regressors` from the two shapes
    (:func:`make_regressor`; none when they match). The regressors are parameters of this loss and train
    with the student.

    The paper trains in two stages: stage 1 minimizes ``L_HT`` alone (training the student up to the guided
    layer, plus ``r``), stage 2 trains the whole student with KD. ``stage1_epochs > 0`` asks the
    ``DistillationModule`` for that schedule (this term alone for ``stage1_epochs`` epochs, then every other
    term and not this one); ``0`` sums this term with the others from the first epoch.

    Args:
        pairs: ``[[guided (student) path, hint (teacher) path], ...]`` or ``{guided: hint}``.
        stage1_epochs: epochs of the hints-only first stage (``>= 0``).
        reduction: ``batchmean`` (the paper's per-example squared norm, batch-averaged) or ``mean``
            (``½ · MSE``); see :func:`hint_loss`.
        regressor_activation: ``None`` or ``"relu"`` after each regressor.
        weight: factor of the term in the total loss.
    """

    name = "fitnets"

    def __init__(
        self,
        pairs: Any,
        stage1_epochs: int = 0,
        reduction: str = "batchmean",
        regressor_activation: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.pairs = parse_pairs(pairs, "FitNetsLoss")
        if int(stage1_epochs) < 0:
            raise ValueError(f"FitNetsLoss: `stage1_epochs` must be >= 0, got {stage1_epochs}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"FitNetsLoss: `reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
        if regressor_activation not in _ACTIVATIONS:
            raise ValueError(
                f"FitNetsLoss: `regressor_activation` must be one of {_ACTIVATIONS}, got {regressor_activation!r}"
            )
        self.stage1_epochs = int(stage1_epochs)
        self.reduction = reduction
        self.regressor_activation = regressor_activation
        #: one regressor per pair, keyed by the pair's index ("0", "1", ...)
        self.regressors = nn.ModuleDict()

    @property
    def student_layers(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.pairs)

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.pairs)

    @property
    def built(self) -> bool:
        """Whether :meth:`build_regressors` has run."""
        return len(self.regressors) == len(self.pairs)

    def build_regressors(
        self, student_shapes: Mapping[str, Sequence[int]], teacher_shapes: Mapping[str, Sequence[int]]
    ) -> None:
        """Build the regressor of each pair from the output shapes (without batch) of the named layers.

        A no-op once built (so a module built at construction keeps its regressors when setup runs again).
        """
        if self.built:
            return
        for index, (s, t) in enumerate(self.pairs):
            try:
                regressor = make_regressor(student_shapes[s], teacher_shapes[t], self.regressor_activation)
            except ValueError as err:
                raise ValueError(f"FitNetsLoss pair [{s!r}, {t!r}]: {err}") from err
            self.regressors[str(index)] = regressor

    def forward(self, inputs: DistillationInputs) -> Tensor:
        """``L_HT`` of one batch, summed over the pairs."""
        if not self.built:
            raise RuntimeError(
                "FitNetsLoss: the regressors are not built; call build_regressors(student_shapes, "
                "teacher_shapes) first (DistillationModule does it when it knows the input shape)"
            )
        total: Tensor | None = None
        for index, (s, t) in enumerate(self.pairs):
            guided = self.regressors[str(index)](inputs.student_features[s])
            term = hint_loss(guided, inputs.teacher_features[t], self.reduction)
            total = term if total is None else total + term
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return (
            f"pairs={list(self.pairs)}, stage1_epochs={self.stage1_epochs}, reduction={self.reduction!r}, "
            f"weight={self.weight}"
        )


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017, arXiv 1612.03928, §3.1).

    ``Q = vec(Σ_c |A_c|^p) / ‖vec(Σ_c |A_c|^p)‖₂`` for features ``A`` of shape ``(N, C, *spatial)``; returns
    ``(N, prod(spatial))`` rows of unit L2 norm. (The authors' code averages over channels instead of
    summing; the normalization makes the two identical.)
    """
    if features.dim() < 3:
        raise ValueError(
            f"attention_map needs features (N, C, *spatial) with at least one spatial axis, got shape "
            f"{tuple(features.shape)}"
        )
    q = features.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def at_loss(student_features: Tensor, teacher_features: Tensor, p: float = 2.0) -> Tensor:
    """One layer pair's attention-transfer distance, as the authors' code computes it.

    ``mean_{n, i} (Q_s[n, i] − Q_t[n, i])²`` with ``Q`` from :func:`attention_map`: the *squared* L2 distance of
    the normalized maps, averaged over the batch and over the ``prod(spatial)`` positions. (The paper's Eq. 2
    writes the non-squared p-norm ``‖Q_s − Q_t‖_p`` with p = 2; its experiments set β to 10³ divided by the
    number of elements of the attention map and the batch size, i.e. this mean of squares times 10³.)

    Raises:
        ValueError: the spatial sizes differ.
    """
    if (
        student_features.shape[2:] != teacher_features.shape[2:]
        or student_features.shape[0] != (teacher_features.shape[0])
    ):
        raise ValueError(
            f"at_loss: student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} must have the same batch and spatial sizes (channels may differ)"
        )
    diff = attention_map(student_features, p) - attention_map(teacher_features.detach(), p)
    return diff.pow(2).mean()


class AttentionTransferLoss(DistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017, arXiv 1612.03928, Eq. 2).

    ``L_AT = β/2 · Σ_j mean_{n, i} (Q_s^j − Q_t^j)²``, ``Q^j = vec(Σ_c |A_c^j|^p) / ‖vec(Σ_c |A_c^j|^p)‖₂``

    for each layer pair ``j`` (usually the outputs of matching residual stages, same spatial size, any
    channels). Normalization, as in the authors' code (``utils.at_loss``): squared L2 distance of the
    normalized maps, averaged over batch and spatial positions, summed over pairs, times ``β/2`` with
    ``β = 1000`` (their default). The paper adds it to the student's cross-entropy (and optionally to KD);
    a ``DistillationModule`` without a KD term adds the cross-entropy.

    Args:
        pairs: ``[[student path, teacher path], ...]`` or ``{student: teacher}``.
        p: exponent ``p > 0`` of the attention map (the paper uses 2).
        beta: ``β ≥ 0``.
        weight: factor of the term in the total loss.
    """

    name = "at"

    def __init__(self, pairs: Any, p: float = 2.0, beta: float = 1000.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.pairs = parse_pairs(pairs, "AttentionTransferLoss")
        if not float(p) > 0 or not math.isfinite(float(p)):
            raise ValueError(f"AttentionTransferLoss: `p` must be a finite number > 0, got {p}")
        if not float(beta) >= 0:
            raise ValueError(f"AttentionTransferLoss: `beta` must be >= 0, got {beta}")
        self.p = float(p)
        self.beta = float(beta)

    @property
    def student_layers(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.pairs)

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.pairs)

    def forward(self, inputs: DistillationInputs) -> Tensor:
        """``L_AT`` of one batch."""
        total: Tensor | None = None
        for s, t in self.pairs:
            try:
                term = at_loss(inputs.student_features[s], inputs.teacher_features[t], self.p)
            except ValueError as err:
                raise ValueError(f"AttentionTransferLoss pair [{s!r}, {t!r}]: {err}") from err
            total = term if total is None else total + term
        assert total is not None
        return self.beta / 2 * total

    def extra_repr(self) -> str:
        return f"pairs={list(self.pairs)}, p={self.p}, beta={self.beta}, weight={self.weight}"
