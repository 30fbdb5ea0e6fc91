"""Probabilistic knowledge transfer: the student matches the teacher's conditional similarity distributions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, flatten_embedding

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def _conditional_similarities(features: Tensor, eps: float) -> Tensor:
    """Rows of ``(cos + 1) / 2`` between the samples of a batch, each row divided by its sum (B x B)."""
    unit = features / (features.norm(dim=1, keepdim=True) + eps)
    unit = torch.nan_to_num(unit, nan=0.0)
    with torch.autocast(features.device.type, enabled=False):
        similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Mean over the B x B entries of ``P_t * log((P_t + eps) / (P_s + eps))``.

    ``P`` holds the conditional probabilities built from cosine similarities (``(cos + 1) / 2``, rows normalised
    to sum to 1, the diagonal included); rows are divided by ``(L2 norm + eps)`` first. It equals the reference
    key ``pkt`` of mdistiller's ``pkt_loss`` and RepDistiller's ``PKT``.
    """
    p_s = _conditional_similarities(flatten_embedding(student_embedding), eps)
    p_t = _conditional_similarities(flatten_embedding(teacher_embedding), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method("pkt")
class PKT(Distiller):
    """Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis, Tefas, ECCV 2018).

    Paper: https://arxiv.org/abs/1803.10837
    loss = ce_weight * CE(z_s, y) + weight * mean_{i,j} P_t(i|j) log((P_t(i|j) + eps) / (P_s(i|j) + eps)),
    where P(i|j) is the cosine-similarity kernel ``(cos(f_i, f_j) + 1) / 2`` over the batch, normalised per row,
    on the pre-logits embeddings of student and teacher (no projection: the two widths may differ). The weight
    30000 and the mean over the B x B entries are the CRD benchmark's (RepDistiller ``-a 0 -b 30000``, mdistiller
    ``PKT.LOSS.FEAT_WEIGHT``), which use the authors' code. No trainable parameters.
    """

    family = "relation"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of PKT.

        Attributes:
            weight: weight of the PKT term.
            ce_weight: weight of the cross-entropy with the labels.
            eps: the epsilon of the norms and of the log ratio (1e-7 in the authors' code).
        """

        weight: float = field(default=30000.0, metadata=valid(ge=0) | tunable(3000.0, 100000.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        eps: float = field(default=1e-7, metadata=valid(gt=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.embeddings = True

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and PKT terms."""
        p = self.params
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_pkt": p.weight * pkt_loss(step.student_embedding, step.teacher_embedding, p.eps),
        }
