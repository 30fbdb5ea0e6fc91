"""Logit distillation with soft targets at a temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, Step, register_method


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(p_t || p_s) between the temperature-softened distributions, averaged over the batch, times T².

    ``p = softmax(z / T)``. The T² factor keeps the gradient scale independent of T (Hinton et al., Sec. 2).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2


@register_method("kd")
class LogitKD(Distiller):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean, 2015).

    Paper: https://arxiv.org/abs/1503.02531
    loss = ce_weight * CE(z_s, y) + kd_weight * T² * KL(softmax(z_t / T) || softmax(z_s / T)).
    Defaults follow the CRD benchmark protocol (Tian et al., 2020): T = 4, ce 0.1, kd 0.9.
    """

    @dataclass(frozen=True)
    class Params:
        """Hyperparameters of logit KD.

        Attributes:
            temperature: softening T of both distributions.
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
        """

        temperature: float = 4.0
        ce_weight: float = 0.1
        kd_weight: float = 0.9

        def __post_init__(self) -> None:
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0 (got {self.temperature})")

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and soft-target terms."""
        p = self.params
        return {
            "loss_ce": p.ce_weight * F.cross_entropy(step.student_logits, step.labels),
            "loss_kd": p.kd_weight * kd_loss(step.student_logits, step.teacher_logits, p.temperature),
        }
