"""Born-again networks: a sequence of generations of one architecture, each distilled from the one before."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.losses import kd_loss


@register_method("ban")
class BornAgain(Distiller):
    """Born-Again Neural Networks (Furlanello, Lipton, Tschannen, Itti, Anandkumar, ICML 2018).

    Paper: https://arxiv.org/abs/1805.04770
    The engine trains the student ``generations`` times from scratch (fresh init, fresh optimiser, same data;
    ``teacher_source = "self"``), handing each step of generation k + 1 the outputs of the frozen generation k as
    its teacher's. Generation 0 is the plain network trained with cross-entropy on the labels; generation k + 1
    minimises ``kd_weight * T² KL(softmax(z_k / T) || softmax(z_{k+1} / T)) + ce_weight * CE(z_{k+1}, y)``.
    Defaults follow the paper's BAN: the previous generation's output distribution alone at T = 1 (no label term;
    ``ce_weight=1`` gives its BAN+L variant). ``generations=2`` (one born-again generation) keeps a run at twice
    the cost of a plain one; the paper trains up to three born-again generations. The record's ``top1`` is the
    last generation's, ``generation_top1`` lists each one's.
    """

    family = "self"
    needs_teacher = False
    teacher_source = "self"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of BAN.

        Attributes:
            generations: trainings in the sequence, generation 0 (plain CE) included.
            temperature: softening T of both distributions in the born-again generations.
            kd_weight: weight of the distillation term from the previous generation.
            ce_weight: weight of the cross-entropy with the labels in the born-again generations.
        """

        generations: int = field(default=2, metadata=valid(ge=1))
        temperature: float = field(default=1.0, metadata=valid(gt=0) | tunable(1.0, 8.0))
        kd_weight: float = field(default=1.0, metadata=valid(ge=0))
        ce_weight: float = field(default=0.0, metadata=valid(ge=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE in generation 0; then distillation from the previous generation (plus CE when weighted)."""
        p = self.params
        ce = F.cross_entropy(step.student_logits, step.labels)
        if step.teacher_logits is None:  # generation 0
            return {"loss_ce": ce}
        terms = {"loss_kd": p.kd_weight * kd_loss(step.student_logits, step.teacher_logits, p.temperature)}
        if p.ce_weight:
            terms["loss_ce"] = p.ce_weight * ce
        return terms
