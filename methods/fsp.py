"""FSP: an initialisation that matches the flow between consecutive stages (Gram matrices across stage pairs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, valid
from kdbench.features import FeatureAdapter, ModelInfo, pool_to_common_size

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """``G[b, i, j] = mean over positions of first[b, i] * second[b, j]``, (B, C_first, C_second).

    Where the two maps differ in size the larger is average-pooled to the smaller's size first.
    """
    first, second = pool_to_common_size(first.float(), second.float())
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / first[0, 0].numel()


def fsp_loss(student_chain: Sequence[Tensor], teacher_chain: Sequence[Tensor]) -> Tensor:
    """Sum over the consecutive pairs (k, k + 1) of each chain of mean ``(G_s - G_t)²`` (RepDistiller's ``FSP``).

    With ``fsp_s`` and ``fsp_t`` (chains of three maps) it equals the reference key ``fsp_2pairs``.
    """
    return sum((fsp_matrix(*s) - fsp_matrix(*t)).pow(2).mean()
               for s, t in zip(pairwise(student_chain), pairwise(teacher_chain), strict=True))


@register_method("fsp")
class FSP(Distiller):
    """A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning (CVPR 2017).

    Junho Yim, Donggyu Joo, Jihoon Bae, Junmo Kim. Paper: https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html
    Initialisation phase (``init_epochs``): the student learns to reproduce the teacher's FSP matrices, the
    Gram matrices ``G = F_a F_b^T / (h w)`` between consecutive maps of a chain of stages:
    loss = sum over the pairs of mean (G_s - G_t)². Main phase: ce_weight * CE(z_s, y) + beta * that loss.

    Protocol: the CRD benchmark's (RepDistiller ``--distill fsp -a 0 -b 50 --init_epochs 30``): the chain is every
    stage map including the stem (``feat[:-1]``), the larger map of a pair average-pooled to the smaller's size,
    and its main loop sets the FSP term to 0 whatever ``-b`` says (the paper's second stage is the main task alone
    too): hence beta 0. kdbench chains the stages of the model with fewer stages with the other model's stages of
    nearest relative depth. RepDistiller needs equal channel counts at each link (its tables read N/A otherwise);
    kdbench maps a student stage whose width differs onto the teacher's with a 1x1 conv + BN (no resizing),
    trained with the student in the initialisation phase.
    """

    family = "init_phase"
    version: ClassVar[int] = 1

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of FSP, after the stage selection (:class:`StageSelection`; by default every stage).

        Attributes:
            beta: weight of the FSP term in the main phase (0: RepDistiller's and the paper's CE-only main phase).
            ce_weight: weight of the cross-entropy with the labels in the main phase.
            init_epochs: epochs of FSP initialisation before the main phase (its own budget).
        """

        beta: float = field(default=0.0, metadata=valid(ge=0))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        init_epochs: int = field(default=30, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.chain = self.tap_stage_pairs(student, teacher, skip_first=False, at_least=2)
        self.init_epochs = params.init_epochs
        shapes = [(student.stages[i], teacher.stages[j].channels) for i, j in self.chain]
        self.adapters = nn.ModuleList(FeatureAdapter(a, dataclasses.replace(a, channels=c)) for a, c in shapes)

    def param_groups(self) -> list[dict]:
        """The adapters train in the main phase only when the FSP term is part of it (``beta > 0``)."""
        return super().param_groups() if self.params.beta > 0 else []

    def _fsp(self, step: Step) -> Tensor:
        student = [a(step.student_features[s]) for a, (s, _) in zip(self.adapters, self.chain, strict=True)]
        return fsp_loss(student, [step.teacher_features[t] for _, t in self.chain])

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """The FSP loss alone (the student and the adapters train)."""
        return {"loss_fsp": self._fsp(step)}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, and the FSP term when ``beta > 0``."""
        p = self.params
        return self.with_ce(step, loss_fsp=p.beta * self._fsp(step)) if p.beta > 0 else self.with_ce(step)
