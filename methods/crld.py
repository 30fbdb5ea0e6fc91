"""Cross-view consistency regularised logit distillation: KD within and across a weak and a strong view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """(B,): T² · KL(softmax(z_t / T) || softmax(z_s / T)) of each sample, in float32."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2


def crld_terms(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor, teacher_strong: Tensor,
               temperature: float, tau_weak: float, tau_strong: float) -> tuple[Tensor, Tensor]:
    """The within-view and cross-view terms, unweighted, each a mean over the batch.

    within = mean_b [(kd(s_w, t_w) + kd(s_s, t_s)) · 1(max p_t_w >= tau_weak)];
    cross = mean_b [(kd(s_s, t_w) + kd(s_w, t_s)) · 1(max p_t_s >= tau_strong)], p = softmax(z) at T = 1. Masked
    samples count as zeros in the mean, as in the authors' code.
    """
    mask_w = (F.softmax(teacher_weak.float(), dim=1).amax(dim=1) >= tau_weak).float()
    mask_s = (F.softmax(teacher_strong.float(), dim=1).amax(dim=1) >= tau_strong).float()
    within = kd_per_sample(student_weak, teacher_weak, temperature) + kd_per_sample(student_strong, teacher_strong,
                                                                                     temperature)
    cross = kd_per_sample(student_strong, teacher_weak, temperature) + kd_per_sample(student_weak, teacher_strong,
                                                                                      temperature)
    return (within * mask_w).mean(), (cross * mask_s).mean()


@register_method("crld")
class CrossViewLogitDistillation(Distiller):
    """Cross-View Consistency Regularisation for Knowledge Distillation (Zhang, Liu, Cai, Ma, ACM MM 2024).

    Paper: https://arxiv.org/abs/2412.16493
    Each batch is seen in a weak view (the run's usual augmentation) and a strong one (RandAugment, the
    ``strong`` extra view); KD runs within each view and across them, on the samples whose teacher is confident:
    loss = ce_weight * (CE(z_s^w, y) + CE(z_s^s, y)) + wv_weight * within + cv_weight * cross (see
    :func:`crld_terms`). Defaults are the CRLD code's (``mdistiller/engine/cfg.py`` of the copies in haiduo/DeepKD and
    scx-822/CRLD-main; the authors' repository is not public): CE 1, within 2, cross 0.5, T 4, confidence
    thresholds 0.9 (weak) and 0.2 (strong); its ImageNet runs use T 1.
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of CRLD.

        Attributes:
            ce_weight: weight of the cross-entropy, on each view.
            wv_weight: weight of the within-view term.
            cv_weight: weight of the cross-view term.
            temperature: KD temperature T.
            tau_weak: confidence a teacher prediction on the weak view needs for the within-view term.
            tau_strong: confidence a teacher prediction on the strong view needs for the cross-view term.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        wv_weight: float = field(default=2.0, metadata=valid(ge=0) | tunable(0.5, 4.0))
        cv_weight: float = field(default=0.5, metadata=valid(ge=0) | tunable(0.1, 2.0))
        temperature: float = field(default=4.0, metadata=valid(gt=0) | tunable(1.0, 8.0))
        tau_weak: float = field(default=0.9, metadata=valid(ge=0, le=1))
        tau_strong: float = field(default=0.2, metadata=valid(ge=0, le=1))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.extra_views = ("strong",)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Cross-entropy on both views, and the masked within-view and cross-view KD terms."""
        p = self.params
        strong = step.views["strong"]
        within, cross = crld_terms(step.student_logits, step.teacher_logits, strong.student_logits,
                                   strong.teacher_logits, p.temperature, p.tau_weak, p.tau_strong)
        return {
            "loss_ce": p.ce_weight * (cross_entropy(step.student_logits, step.labels)
                                      + cross_entropy(strong.student_logits, step.labels)),
            "loss_wv": p.wv_weight * within,
            "loss_cv": p.cv_weight * cross,
        }
