"""SRD: a linear projector, batch-normalised features on both sides and a log of the summed fourth powers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, flatten_embedding, kd_loss

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo

#: the epsilon of the authors' (non-affine) BatchNorm1d on both sides
BN_EPS = 1e-4


def srd_representation_loss(projected_student: Tensor, teacher_embedding: Tensor) -> Tensor:
    """``log sum |BN(f_s) - BN(f_t)|⁴`` over the batch and the features, in float32 (unweighted).

    BN standardises each feature over the batch (batch mean, biased variance, epsilon 1e-4, no affine part), as
    the authors' BatchNorm1d does in training mode; ``projected_student`` is the student embedding after the
    linear projector, with the teacher's width.
    """
    f_s = F.batch_norm(projected_student.float(), None, None, training=True, eps=BN_EPS)
    f_t = F.batch_norm(teacher_embedding.float(), None, None, training=True, eps=BN_EPS)
    return (f_s - f_t).abs().pow(4).sum().log()


@register_method("srd")
class SimpleRecipeDistillation(Distiller):
    """Understanding the Role of the Projector in Knowledge Distillation (Miles, Mikolajczyk, AAAI 2024).

    Paper: https://arxiv.org/abs/2303.11098
    The student's pooled embedding goes through a trainable linear projector to the teacher's width; both sides are
    batch-normalised (no affine part) and compared by log sum |f_s - f_t|⁴, next to KD at T = 1:
    loss = ce_weight * CE(z_s, y) + rep_weight * log sum |BN(W f_s) - BN(f_t)|⁴ + kd_weight * KL(p_t || p_s).
    Defaults are the authors' code (roymiles/Simple-Recipe-Distillation, ``imagenet/torchdistill/losses/single.py``
    ``OurDistillationLoss`` with ``configs/ilsvrc2012/ours/res3418.yaml``): CE 1, representation 2, KD 1 at T 1, on
    the last stage's average-pooled map (here the model's pre-logits embedding). The projector counts as
    ``extra_params_m``.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of SRD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            rep_weight: weight of the representation term.
            kd_weight: weight of the KD term.
            temperature: KD temperature.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        rep_weight: float = field(default=2.0, metadata=valid(ge=0) | tunable(0.5, 8.0, log=True))
        kd_weight: float = field(default=1.0, metadata=valid(ge=0) | tunable(0.1, 4.0, log=True))
        temperature: float = field(default=1.0, metadata=valid(gt=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.embeddings = True
        self.projector = nn.Linear(student.embedding_dim, teacher.embedding_dim)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, representation and KD terms."""
        p = self.params
        projected = self.projector(flatten_embedding(step.student_embedding))
        rep = srd_representation_loss(projected, flatten_embedding(step.teacher_embedding))
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_rep": p.rep_weight * rep,
            "loss_kd": p.kd_weight * kd_loss(step.student_logits, step.teacher_logits, p.temperature),
        }
