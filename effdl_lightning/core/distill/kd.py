"""Knowledge distillation with soft targets (Hinton, Vinyals & Dean 2015, arXiv 1503.02531)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from effdl_lightning.core.distill.base import DistillationInputs, DistillationLoss

__all__ = ["KDLoss", "kd_loss"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton et al.'s distillation loss (arXiv 1503.02531, §2).

    ``L = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)``

    The KL divergence is summed over classes and averaged over the batch; ``CE`` is the usual cross-entropy
    at temperature 1 (mean over the batch). The ``T²`` factor keeps the soft term's gradients, which scale as
    ``1/T²``, comparable across temperatures (§2: "it is important to multiply them by T²").

    Args:
        student_logits: ``(N, K)`` logits ``z_s``.
        teacher_logits: ``(N, K)`` logits ``z_t`` (no gradient flows into them).
        targets: ``(N,)`` class indices ``y``; may be ``None`` when ``alpha == 1``.
        temperature: ``T > 0``.
        alpha: weight ``α ∈ [0, 1]`` of the soft term.
    """
    if temperature <= 0:
        raise ValueError(f"kd_loss: `temperature` must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: `alpha` must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; both networks must predict the same classes"
        )
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    loss = alpha * t * t * soft
    if alpha < 1.0:
        if targets is None:
            raise ValueError("kd_loss: `targets` are needed when alpha < 1 (the hard-label term)")
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


class KDLoss(DistillationLoss):
    """Soft-target knowledge distillation (Hinton et al. 2015, arXiv 1503.02531) as a loss term.

    ``L_kd = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)`` (see :func:`kd_loss`).

    Hinton et al. put "a considerably lower weight" on the hard-label term; ``α = 0.9, T = 4`` is the common
    default. On MNIST they used ``T = 20`` for 2×800-unit students and found ``T`` of 2.5–4 best for 2×30.

    Args:
        temperature: softmax temperature ``T > 0``.
        alpha: weight ``α ∈ [0, 1]`` of the soft term; ``1 − α`` goes to the hard labels.
        weight: factor of the term in the total loss.
    """

    name = "kd"
    includes_hard_labels = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, weight: float = 1.0) -> None:
        super().__init__(weight)
        if not float(temperature) > 0:
            raise ValueError(f"KDLoss: `temperature` must be > 0, got {temperature}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"KDLoss: `alpha` must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(self, inputs: DistillationInputs) -> Tensor:
        """``L_kd`` of one batch."""
        return kd_loss(
            inputs.student_logits, inputs.teacher_logits, inputs.targets, self.temperature, self.alpha
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, weight={self.weight}"
