"""Logit distillation with soft targets at a temperature."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.losses import compared_logits, cross_entropy, kd_loss

__all__ = ["LogitKD", "kd_loss"]  # kd_loss stays importable from here for plugins written against older versions


@register_method("kd")
class LogitKD(Distiller):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean, 2015).

    Paper: https://arxiv.org/abs/1503.02531
    loss = ce_weight * CE(z_s, y) + kd_weight * T² * KL(softmax(z_t / T) || softmax(z_s / T)).
    Defaults follow the CRD benchmark protocol (Tian et al., 2020): T = 4, ce 0.1, kd 0.9. With
    ``standardize`` both logits are z-scored per sample before the temperature (Sun et al., CVPR 2024, "Logit
    Standardization in Knowledge Distillation", https://arxiv.org/abs/2403.01427); ``kd_ls`` is that paper's
    setting.
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of logit KD.

        Attributes:
            temperature: softening T of both distributions.
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
            standardize: z-score the student's and the teacher's logits (per sample) before the temperature.
        """

        temperature: float = field(default=4.0, metadata=valid(gt=0) | tunable(1.0, 8.0))
        ce_weight: float = field(default=0.1, metadata=valid(ge=0))
        kd_weight: float = field(default=0.9, metadata=valid(ge=0) | tunable(0.1, 1.0))
        standardize: bool = False

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and soft-target terms."""
        p = self.params
        student, teacher = compared_logits(step.student_logits, step.teacher_logits, p.standardize)
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_kd": p.kd_weight * kd_loss(student, teacher, p.temperature),
        }
