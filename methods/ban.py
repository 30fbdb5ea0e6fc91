"""Born-again networks: a sequence of generations of one architecture, each distilled from the one before."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import DatasetInfo
from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import kd_loss


@register_method("ban")
class BornAgain(Distiller):
    """Born-Again Neural Networks (Furlanello, Lipton, Tschannen, Itti, Anandkumar, ICML 2018).

    Paper: https://arxiv.org/abs/1805.04770
    The engine trains the student ``generations`` times from scratch (fresh init, fresh optimiser, same data).
    Generation 0 is the plain network trained with cross-entropy on the labels; generation k + 1 minimises
    ``kd_weight * T² KL(softmax(z_k / T) || softmax(z_{k+1} / T)) + ce_weight * CE(z_{k+1}, y)`` against the frozen
    generation k. Defaults follow the paper's BAN: the previous generation's output distribution alone at T = 1
    (no label term; ``ce_weight=1`` gives its BAN+L variant). ``generations=2`` (one born-again generation) keeps a
    run at twice the cost of a plain one; the paper trains up to three born-again generations. The record's
    ``top1`` is the last generation's, ``generation_top1`` lists each one's.
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

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo) -> None:
        super().__init__(params, student, teacher, data)
        self._previous: tuple[nn.Module, ...] = ()  # a tuple, so that it is not a submodule of the method

    @classmethod
    def num_generations(cls, params: Params) -> int:
        """``params.generations``."""
        return params.generations

    def start_generation(self, generation: int, previous: nn.Module | None) -> None:
        """Keep the frozen previous generation as this generation's teacher."""
        self._previous = (previous,) if previous is not None else ()

    @property
    def previous(self) -> nn.Module | None:
        """The previous generation (frozen, eval mode), or ``None`` in generation 0."""
        return self._previous[0] if self._previous else None

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE in generation 0; then distillation from the previous generation (plus CE when weighted)."""
        p = self.params
        ce = F.cross_entropy(step.student_logits, step.labels)
        if self.previous is None:
            return {"loss_ce": ce}
        with torch.inference_mode():
            previous_logits = self.previous(step.images)
        terms = {"loss_kd": p.kd_weight * kd_loss(step.student_logits, previous_logits.clone(), p.temperature)}
        if p.ce_weight:
            terms["loss_ce"] = p.ce_weight * ce
        return terms
