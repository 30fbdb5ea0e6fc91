"""Normalized KD: the target-class term and the renormalised non-target distribution, distilled separately."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, valid
from kdbench.losses import cross_entropy


def non_target_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """The (B, C - 1) logits of every class but the label, in class order."""
    keep = F.one_hot(labels, logits.shape[1]) == 0
    return logits[keep].reshape(logits.shape[0], -1)


def nkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
              gamma: float) -> tuple[Tensor, Tensor]:
    """NKD's target and non-target terms, in float32 (as the authors' ``NKDLoss``).

    target = -mean_b p_t[y] log p_s[y] with ``p = softmax(z)`` at temperature 1 (the teacher's probability, not
    renormalised); non-target = -gamma T² mean_b sum_{c != y} q_t log q_s, with ``q = softmax`` over the non-target
    logits divided by T: both non-target distributions are normalised to sum to 1 (a cross-entropy, teacher
    entropy included).
    """
    s, t = student_logits.float(), teacher_logits.float()
    index = labels[:, None]
    log_p_s = F.log_softmax(s, dim=1).gather(1, index)
    p_t = F.softmax(t, dim=1).gather(1, index).detach()
    target = -(p_t * log_p_s).mean()
    log_q_s = F.log_softmax(non_target_logits(s, labels) / temperature, dim=1)
    q_t = F.softmax(non_target_logits(t, labels) / temperature, dim=1)
    non_target = -gamma * temperature**2 * (q_t * log_q_s).sum(dim=1).mean()
    return target, non_target


def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
             gamma: float) -> Tensor:
    """The NKD loss: the sum of :func:`nkd_terms`."""
    target, non_target = nkd_terms(student_logits, teacher_logits, labels, temperature, gamma)
    return target + non_target


@register_method("nkd")
class NormalizedKD(Distiller):
    """From Knowledge Distillation to Self-Knowledge Distillation (Yang, Zeng, Yuan, Li, ICCV 2023): Normalized KD.

    Paper: "... A Unified Approach with Normalized Loss and Customized Soft Labels", https://arxiv.org/abs/2303.13005
    Splits KD into the target class and the non-target classes and normalises the non-target predictions of
    teacher and student to sum to 1 before matching them:
    loss = ce_weight * CE(z_s, y) - mean_b p_t[y] log p_s[y] - gamma T² mean_b sum_{c != y} q_t,c log q_s,c,
    p = softmax(z), q = softmax over the non-target logits / T. Defaults are the authors' code (yzd-v/cls_KD,
    ``mmcls/models/dis_losses/nkd.py`` and its ImageNet configs): T 1, gamma 1.5, the student's own CE kept at
    weight 1. Its CIFAR-100 config (``configs/distillers/cifar100/res34_distill_res18_cifar.py``) uses T 3,
    gamma 3.5.
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of NKD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            temperature: T of the non-target distributions.
            gamma: weight of the non-target term.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        temperature: float = field(default=1.0, metadata=valid(gt=0))
        gamma: float = field(default=1.5, metadata=valid(ge=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and the NKD loss."""
        p = self.params
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_kd": nkd_loss(step.student_logits, step.teacher_logits, step.labels, p.temperature, p.gamma),
        }
