"""KD-SVD: the student matches how the teacher's dominant singular vectors change from one stage to the next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, pool_to_common_size

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def right_singular_vectors(feature: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` singular values (L2-normalised) and right singular vectors (unit columns) of each sample.

    The (B, C, H, W) map is read as a (C·H) x W matrix per sample, as mdistiller does; the SVD runs in float32 on
    the map's device. Returns ``(s, v)`` of shapes (B, k) and (B, W, k). The SVD's gradient is not finite where
    singular values repeat (e.g. several zero ones); such entries of the map's gradient are set to 0.
    """
    b, c, h, w = feature.shape
    x = feature.float().reshape(b, c * h, w)
    if x.requires_grad:
        x.register_hook(_finite)
    with torch.autocast(feature.device.type, enabled=False):
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return F.normalize(_finite(s)[:, :k], dim=1), F.normalize(_finite(vh.mT)[:, :, :k], dim=1)


def kdsvd_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], k: int = 1) -> Tensor:
    """KD-SVD over a chain of stage pairs (mdistiller's ``kdsvd_loss``).

    Per stage: the teacher's top-k right singular vectors v_t, and the student's top-(k+3), of which each teacher
    vector takes the student column of largest |cosine| with it, signed to agree (v_s); both are scaled by the
    teacher's normalised singular values. For consecutive stages i-1, i the relation between them is the RBF
    ``exp(-(v[a] - v'[b])² / 8)`` of every entry pair (a, b) of the two vectors, and the loss is the sum of the
    squared student-teacher differences of those relations over the chain, divided by the batch size (non-finite
    terms count 0). Where the maps of a pair differ in size the larger is average-pooled to the smaller's first.
    It equals the reference keys ``kdsvd_k1_3stages`` and ``kdsvd_k1_fsp_chain_mdistiller`` on the CPU.
    """
    total = torch.zeros((), device=student_features[0].device)
    previous: tuple[Tensor, Tensor] | None = None
    for f_s, f_t in zip(student_features, teacher_features, strict=True):
        f_s, f_t = pool_to_common_size(f_s, f_t.detach())
        s_t, v_t = right_singular_vectors(f_t, k)
        _, v_s = right_singular_vectors(f_s, k + 3)
        cosine = v_s.mT @ v_t
        best = cosine.abs().amax(dim=1, keepdim=True)
        v_s = v_s @ torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
        v_s, v_t = v_s * s_t.unsqueeze(1), v_t * s_t.unsqueeze(1)
        if previous is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - previous[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - previous[1].unsqueeze(1)).pow(2) / 8)
            total = total + _finite((rbf_s - rbf_t).pow(2)).sum()
        previous = (v_s, v_t)
    return total / student_features[0].shape[0]


@register_method("kdsvd")
class KDSVD(Distiller):
    """Self-supervised Knowledge Distillation Using Singular Value Decomposition (Lee, Kim, Song, ECCV 2018).

    Paper: https://arxiv.org/abs/1807.06819
    loss = ce_weight * CE(z_s, y) + weight * :func:`kdsvd_loss` over the matched stages: the dominant right
    singular vectors of each stage's map, and the RBF relations between those of consecutive stages, which the
    student's must reproduce (the paper's "self-supervised" transfer of how knowledge flows between layers).

    As mdistiller computes it (its CIFAR defaults: k = 1, CE 1, KD-SVD 1, every stage map but the stem): a map
    is read as a (C·H) x W matrix, so the singular vectors live in the width axis and student and teacher may have
    different channel counts. RepDistiller's ``KDSVD`` reads it as HW x C instead (vectors over channels: only
    pairs of equal width can run it, and it gives a different value, reference key
    ``kdsvd_k1_fsp_chain_repdistiller``). Singular vectors are defined up to sign and the teacher's is not
    canonicalised, so the value depends on the SVD backend's sign choice (LAPACK on the CPU, cuSOLVER on CUDA);
    the reference values are the CPU's. kdbench pairs the stages of the model with fewer stages, all but its
    first, with the other model's stage of nearest relative depth; at least two pairs are needed.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of KD-SVD, after the stage selection (:class:`StageSelection`).

        Attributes:
            weight: weight of the KD-SVD term.
            ce_weight: weight of the cross-entropy with the labels.
            k: singular vectors taken from the teacher (the student offers k + 3).
        """

        weight: float = field(default=1.0, metadata=valid(ge=0) | tunable(0.1, 10.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        k: int = field(default=1, metadata=valid(ge=1))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.pairs = self.tap_stage_pairs(student, teacher, at_least=2)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and KD-SVD terms."""
        p = self.params
        return self.with_ce(step, loss_svd=p.weight * kdsvd_loss(*self.paired_maps(step), p.k))
