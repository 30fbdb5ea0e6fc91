"""Refined logit distillation: a sample-confidence term and a masked, label-ranked correlation term."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.losses import compared_logits, cross_entropy

#: the logit given to masked classes before the softmax, as in the authors' code
_MASKED = -1e9


def _binary(probs: Tensor, index: Tensor) -> Tensor:
    """(B, 2): the probability of class ``index`` of each row and the sum of the others."""
    mask = F.one_hot(index, probs.shape[1]).to(probs.dtype)
    return torch.stack(((probs * mask).sum(1), (probs * (1 - mask)).sum(1)), dim=1)


def rld_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
              alpha_temperature: float) -> tuple[Tensor, Tensor]:
    """SCD and MCD, each T²-scaled and averaged over the batch, in float32.

    SCD (sample confidence distillation) compares binary distributions at temperature ``alpha_temperature``: the
    teacher's probability of its own top class against the rest, and the student's probability of the *label*
    against the rest (the authors' code splits the two at different classes). MCD (masked correlation
    distillation) is KD at ``temperature`` over the classes the teacher ranks strictly below the label: every class
    whose teacher logit is >= the label's (the label included) is masked out of both softmaxes.
    """
    s, t = student_logits.float(), teacher_logits.float()
    p_s, p_t = F.softmax(s / alpha_temperature, dim=1), F.softmax(t / alpha_temperature, dim=1)
    binary_s, binary_t = _binary(p_s, labels), _binary(p_t, t.argmax(dim=1))
    scd = F.kl_div(binary_s.log(), binary_t, reduction="batchmean") * alpha_temperature**2
    mask = t >= t.gather(1, labels.reshape(-1, 1))
    log_q_s = F.log_softmax((s / temperature).masked_fill(mask, _MASKED), dim=1)
    q_t = F.softmax((t / temperature).masked_fill(mask, _MASKED), dim=1)
    mcd = F.kl_div(log_q_s, q_t, reduction="batchmean") * temperature**2
    return scd, mcd


def rld_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float,
             temperature: float, alpha_temperature: float) -> Tensor:
    """``alpha * SCD + beta * MCD`` (see :func:`rld_terms`)."""
    scd, mcd = rld_terms(student_logits, teacher_logits, labels, temperature, alpha_temperature)
    return alpha * scd + beta * mcd


@register_method("rld")
class RefinedLogitDistillation(Distiller):
    """Knowledge Distillation with Refined Logits (Sun, Chen, Lyu, Chen, Chen, Wang, ICCV 2025).

    Paper: https://arxiv.org/abs/2408.07703 (code: zju-SWJ/RLD)
    loss = ce_weight * CE(z_s, y) + ramp * (alpha * SCD + beta * MCD): SCD matches the student's confidence in the
    label with the teacher's confidence in its own prediction (binary distributions at ``alpha_temperature``), MCD
    matches the class ranking below the label, with every class the teacher ranks at or above the label masked, so
    a wrong teacher never pushes the student away from the label. ramp = min(epoch / warmup, 1), epochs from 1.
    Defaults are the authors' README command (``--same-t RLD.ALPHA 1. RLD.BETA 8. RLD.T 4.``: the SCD temperature
    equals T) with ``mdistiller/engine/cfg.py``'s CE 1 and 20-epoch warm-up; their ``cfg.py`` alone sets the SCD
    temperature to 1 (``alpha_temperature = 1``). ``standardize`` z-scores both logits first (``--logit-stand``).
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of RLD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            alpha: weight of SCD.
            beta: weight of MCD.
            temperature: temperature T of MCD.
            alpha_temperature: temperature of SCD; ``None`` uses ``temperature`` (the README's ``--same-t``).
            warmup: epochs (of the paper's, counted from 1) of the linear ramp of the distillation terms.
            standardize: z-score the student's and the teacher's logits (per sample) first.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        alpha: float = field(default=1.0, metadata=valid(ge=0))
        beta: float = field(default=8.0, metadata=valid(ge=0) | tunable(0.5, 10.0))
        temperature: float = field(default=4.0, metadata=valid(gt=0) | tunable(1.0, 8.0))
        alpha_temperature: float | None = field(default=None, metadata=valid(gt=0))
        warmup: float = field(default=20.0, metadata=valid(ge=0))
        standardize: bool = False

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, and the ramped SCD and MCD terms."""
        p = self.params
        student, teacher = compared_logits(step.student_logits, step.teacher_logits, p.standardize)
        alpha_t = p.temperature if p.alpha_temperature is None else p.alpha_temperature
        scd, mcd = rld_terms(student, teacher, step.labels, p.temperature, alpha_t)
        ramp = step.ramp(p.warmup)
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_scd": ramp * p.alpha * scd,
            "loss_mcd": ramp * p.beta * mcd,
        }
