"""Decoupled knowledge distillation: the KD loss split into a target-class and a non-target-class term."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.losses import compared_logits, cross_entropy

#: subtracted from the target logit to take it out of the non-target softmax, as in the authors' code
_MASK_OFFSET = 1000.0


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
              temperature: float) -> tuple[Tensor, Tensor]:
    """TCKD and NCKD, each T² · KL summed over its classes and averaged over the batch, in float32.

    TCKD compares the binary distributions (p_target, 1 - p_target) of ``softmax(z / T)``; NCKD compares the
    distributions over the non-target classes, renormalised (the target logit is pushed down by 1000 before the
    softmax, as mdistiller does).
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[1]).to(s.dtype)
    p_s, p_t = s.softmax(dim=1), t.softmax(dim=1)
    binary_s = torch.stack(((p_s * target).sum(1), (p_s * (1 - target)).sum(1)), dim=1)
    binary_t = torch.stack(((p_t * target).sum(1), (p_t * (1 - target)).sum(1)), dim=1)
    scale = temperature**2 / labels.shape[0]
    tckd = F.kl_div(binary_s.log(), binary_t, reduction="sum") * scale
    log_q_s = F.log_softmax(s - _MASK_OFFSET * target, dim=1)
    q_t = F.softmax(t - _MASK_OFFSET * target, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * scale
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float,
             temperature: float) -> Tensor:
    """``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`)."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd


@register_method("dkd")
class DecoupledKD(Distiller):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022).

    Paper: https://arxiv.org/abs/2203.08679
    loss = ce_weight * CE(z_s, y) + ramp * (alpha * TCKD + beta * NCKD): TCKD is the T²-scaled KL between the
    teacher's and the student's binary target / non-target probabilities, NCKD the T²-scaled KL between their
    distributions over the non-target classes alone; ramp = min(epoch / warmup, 1) with epochs counted from 1.
    Defaults are the authors' code (megvii-research/mdistiller, ``mdistiller/engine/cfg.py``): CE 1, alpha 1,
    beta 8, T 4, a 20-epoch warm-up. Its CIFAR-100 configs (``configs/cifar100/dkd/*.yaml``) change beta per pair:
    2 for resnet56 -> resnet20 and resnet110 -> resnet32; 6 for vgg13 -> vgg8, vgg13 -> MobileNetV2,
    wrn_40_2 -> wrn_16_2 and wrn_40_2 -> wrn_40_1; the default 8 for resnet32x4 -> resnet8x4 / ShuffleNetV1 /
    ShuffleNetV2, ResNet50 -> MobileNetV2 and wrn_40_2 -> ShuffleNetV1. With ``standardize`` both logits are
    z-scored before the temperature (logit standardisation, Sun et al., CVPR 2024; see ``dkd_ls``).
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of DKD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            alpha: weight of TCKD, the target-class term.
            beta: weight of NCKD, the non-target-class term.
            temperature: softening T of both distributions.
            warmup: epochs (of the paper's, counted from 1) of the linear ramp of the distillation terms.
            standardize: z-score the student's and the teacher's logits (per sample) before the temperature.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        alpha: float = field(default=1.0, metadata=valid(ge=0))
        beta: float = field(default=8.0, metadata=valid(ge=0) | tunable(1.0, 10.0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        warmup: float = field(default=20.0, metadata=valid(ge=0))
        standardize: bool = False

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, and the ramped TCKD and NCKD terms."""
        p = self.params
        student, teacher = compared_logits(step.student_logits, step.teacher_logits, p.standardize)
        tckd, nckd = dkd_terms(student, teacher, step.labels, p.temperature)
        ramp = step.ramp(p.warmup)
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_tckd": ramp * p.alpha * tckd,
            "loss_nckd": ramp * p.beta * nckd,
        }
