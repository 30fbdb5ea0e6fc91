"""Correlation congruence: the student matches the teacher's correlations between the samples of a batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, flatten_embedding

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def cc_adjacent_loss(student_proj: Tensor, teacher_proj: Tensor) -> Tensor:
    """The CRD benchmark's CC: ``d = |f_s - f_t|``, mean over b < B-1 of ``sum_k d[b, k] d[b+1, k]``.

    The correlation of each sample's student-teacher gap with the next sample's (RepDistiller's ``Correlation``,
    restructured there from the CC authors' code). Equals the reference key ``cc_repdistiller``.
    """
    delta = (student_proj.float() - teacher_proj.float()).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def gaussian_correlation(features: Tensor, gamma: float, order: int) -> Tensor:
    """The order-``order`` Taylor expansion of the Gaussian RBF kernel between L2-normalised rows (B x B).

    ``K = sum_{p=0..order} exp(-2 gamma) (2 gamma)^p / p! * (f f^T)^p`` with element-wise powers.
    """
    unit = F.normalize(features.float(), p=2, dim=-1)
    with torch.autocast(unit.device.type, enabled=False):
        similarity = unit @ unit.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * similarity.pow(p)
               for p in range(order + 1))


def cc_gaussian_loss(student_proj: Tensor, teacher_proj: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Mean over B x B of ``(K_s - K_t)²`` with the Gaussian-RBF correlation; the reference key ``cc_gaussian_p2_g0.4``.

    As AberHu's Knowledge-Distillation-Zoo ``CC(gamma, P_order)`` computes it.
    """
    k_s, k_t = gaussian_correlation(student_proj, gamma, order), gaussian_correlation(teacher_proj, gamma, order)
    return F.mse_loss(k_s, k_t)


@register_method("cc")
class CorrelationCongruence(Distiller):
    """Correlation Congruence for Knowledge Distillation (Peng, Jin, Liu, Zhou, Wu, Liu, Li, Zhang, ICCV 2019).

    Paper: https://arxiv.org/abs/1904.01802
    loss = ce_weight * CE(z_s, y) + weight * C(W_s e_s, W_t e_t), with e the pre-logits embeddings and W_s, W_t
    trainable linear projections to ``dim`` (128) features (RepDistiller's ``LinearEmbed``: no normalisation).

    C is one of two definitions, since the public codes disagree (the paper's instance term is left out by
    both). ``"adjacent"`` (default) is the CRD benchmark's: C = mean_b sum_k |d_b,k| |d_b+1,k| over the gaps
    d = W_s e_s - W_t e_t of neighbouring samples, which its weight 0.02 (``-a 0 -b 0.02``) was tuned for.
    ``"gaussian"`` is the paper's correlation with the order-``order`` Taylor expansion of a Gaussian RBF
    kernel (gamma 0.4, order 2): C = mean_{i,j} (K_s,ij - K_t,ij)², on row-normalised projections (AberHu's code,
    which pairs it with a weight of 100 on CIFAR-10; set ``weight`` accordingly). The projections train with
    the student and count as ``extra_params_m``.
    """

    family = "relation"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of CC.

        Attributes:
            weight: weight of the correlation term.
            ce_weight: weight of the cross-entropy with the labels.
            correlation: ``"adjacent"`` (the CRD benchmark's) or ``"gaussian"`` (the Taylor-expanded RBF kernel).
            gamma: the Gaussian kernel's gamma (``"gaussian"`` only).
            order: the order of the kernel's Taylor expansion (``"gaussian"`` only).
            dim: width of the projections.
        """

        weight: float = field(default=0.02, metadata=valid(ge=0) | tunable(0.002, 0.2, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        correlation: str = "adjacent"
        gamma: float = field(default=0.4, metadata=valid(gt=0))
        order: int = field(default=2, metadata=valid(ge=0))
        dim: int = field(default=128, metadata=valid(ge=1))

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.correlation not in ("adjacent", "gaussian"):
                raise ValueError(f"correlation must be 'adjacent' or 'gaussian' (got {self.correlation!r})")

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.embeddings = True
        self.embed_s = nn.Linear(student.embedding_dim, params.dim)
        self.embed_t = nn.Linear(teacher.embedding_dim, params.dim)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and correlation-congruence terms."""
        p = self.params
        f_s = self.embed_s(flatten_embedding(step.student_embedding)).float()
        f_t = self.embed_t(flatten_embedding(step.teacher_embedding)).float()
        cc = cc_adjacent_loss(f_s, f_t) if p.correlation == "adjacent" else cc_gaussian_loss(f_s, f_t, p.gamma, p.order)
        return {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels), "loss_cc": p.weight * cc}
