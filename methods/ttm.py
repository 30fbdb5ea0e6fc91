"""Transformed teacher matching: the student at T = 1 matches the teacher's power-transformed distribution."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.losses import cross_entropy


def ttm_loss(student_logits: Tensor, teacher_logits: Tensor, exponent: float, weighted: bool = False) -> Tensor:
    """TTM (or, ``weighted``, WTTM): KL(q || softmax(z_s)) averaged over the batch, in float32.

    ``q = p_t^l / sum(p_t^l)`` with ``p_t = softmax(z_t)`` is the teacher's distribution at temperature 1/l (it
    equals ``softmax(l * z_t)``); the student is not softened. WTTM weights each sample's KL by the power sum
    ``sum_c p_t^l``, which is larger for a flatter teacher prediction. No T² factor, as in the authors' code.
    """
    log_p_t = F.log_softmax(teacher_logits.float(), dim=1)
    log_q = F.log_softmax(exponent * log_p_t, dim=1)
    kl = (log_q.exp() * (log_q - F.log_softmax(student_logits.float(), dim=1))).sum(dim=1)
    if weighted:
        kl = kl * (exponent * log_p_t).exp().sum(dim=1)
    return kl.mean()


@register_method("ttm")
class TransformedTeacherMatching(Distiller):
    """Knowledge Distillation Based on Transformed Teacher Matching (Zheng, Yang, ICLR 2024).

    Paper: https://arxiv.org/abs/2402.11148
    loss = ce_weight * CE(z_s, y) + kd_weight * KL(q || softmax(z_s)), q = p_t^l / sum(p_t^l): temperature
    scaling on the teacher's side only (a power transform with exponent l = 1/T), which adds a Rényi-entropy
    regulariser to KD. With ``weighted`` each sample's term is weighted by sum(p_t^l) (WTTM; see ``wttm``).
    Defaults are the example run of the authors' README (zkxufo/TTM, vgg13 -> vgg8: ``--ttm_l 0.1 -r 1 -b 45``).
    Reference keys ``ttm_l0.1``, ``ttm_l0.2``, ``ttm_l1``, ``wttm_l0.1``, ``wttm_l0.2`` (``distiller_zoo/ttm.py``,
    ``wttm.py``).
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of TTM.

        Attributes:
            exponent: l, the power of the teacher's probabilities (1 / temperature; ``--ttm_l``).
            ce_weight: weight of the cross-entropy with the labels (``-r``).
            kd_weight: weight of the TTM term (``-b``).
            weighted: weight each sample by the power sum of the teacher's probabilities (WTTM).
        """

        exponent: float = field(default=0.1, metadata=valid(gt=0) | tunable(0.05, 1.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=45.0, metadata=valid(ge=0) | tunable(1.0, 100.0, log=True))
        weighted: bool = False

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and (W)TTM terms."""
        p = self.params
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_kd": p.kd_weight * ttm_loss(step.student_logits, step.teacher_logits, p.exponent, p.weighted),
        }
