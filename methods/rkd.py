"""Relational knowledge distillation: the student matches the teacher's pairwise distances and triplet angles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, flatten_embedding

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``sqrt(clamp(|a|² + |b|² - 2ab, eps))`` between rows (B x B), zero diagonal."""
    with torch.autocast(e.device.type, enabled=False):
        prod = e @ e.t()
    square = e.pow(2).sum(dim=1)
    dist = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
    return dist * (1.0 - torch.eye(len(e), device=e.device, dtype=dist.dtype))


def rkd_distance(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) mean over B x B of the distances, each side divided by its mean positive distance."""
    s, t = flatten_embedding(student_embedding), flatten_embedding(teacher_embedding)
    with torch.no_grad():
        d_t = pairwise_distances(t)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distances(s)
    return F.smooth_l1_loss(d_s / d_s[d_s > 0].mean(), d_t)


def _angles(e: Tensor) -> Tensor:
    """``<n(e_j - e_i), n(e_k - e_i)>`` for all triplets (B³ values), ``n`` the L2 normalisation."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    with torch.autocast(e.device.type, enabled=False):
        return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_angle(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) mean over the B³ triplets of the student's and the teacher's angle cosines."""
    s, t = flatten_embedding(student_embedding), flatten_embedding(teacher_embedding)
    with torch.no_grad():
        a_t = _angles(t)
    return F.smooth_l1_loss(_angles(s), a_t)


@register_method("rkd")
class RKD(Distiller):
    """Relational Knowledge Distillation (Park, Kim, Lu, Cho, CVPR 2019).

    Paper: https://arxiv.org/abs/1904.05068
    loss = ce_weight * CE(z_s, y) + weight * (distance_weight * D + angle_weight * A) on the pre-logits
    embeddings, with D the smooth-L1 loss between the student's and the teacher's pairwise distance matrices
    (each divided by its mean positive distance) and A the smooth-L1 loss between the cosines of the angles
    of all triplets. Defaults: 25 and 50 (paper and CRD benchmark, RepDistiller ``-a 0 -b 1``; the mean of
    mdistiller's and RepDistiller's ``RKDLoss`` over the B x B and B³ entries). No trainable parameters.

    Memory: the angle term compares B³ cosines and keeps B x B x D difference tensors for the backward pass
    (the teacher's side runs without gradient). Measured on a CPU machine (float32, forward and backward of the
    angle term, peak resident memory): batch 256 with 512-d embeddings takes about 0.77 GB (0.38 GB of it kept
    for the backward), batch 128 0.2 GB, batch 256 with 2048-d embeddings 3.1 GB. Expect it to grow as B² D
    (plus B³ for the cosines): doubling the batch takes about four times as much. ``angle_weight = 0`` skips it.
    """

    family = "relation"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of RKD.

        Attributes:
            distance_weight: weight of the distance term D.
            angle_weight: weight of the angle term A (0 skips computing it).
            weight: overall weight of the RKD term (the CRD benchmark's ``-b``).
            ce_weight: weight of the cross-entropy with the labels.
        """

        distance_weight: float = field(default=25.0, metadata=valid(ge=0) | tunable(1.0, 100.0, log=True))
        angle_weight: float = field(default=50.0, metadata=valid(ge=0) | tunable(1.0, 100.0, log=True))
        weight: float = field(default=1.0, metadata=valid(ge=0))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.embeddings = True

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, distance and angle terms."""
        p = self.params
        s, t = step.student_embedding, step.teacher_embedding
        terms = {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
                 "loss_rkd_distance": p.weight * p.distance_weight * rkd_distance(s, t)}
        if p.angle_weight:
            terms["loss_rkd_angle"] = p.weight * p.angle_weight * rkd_angle(s, t)
        return terms
