"""KD++ / DKD++: logit distillation plus the ND loss on the embedding's norm and direction.

Loss pieces only: the method classes need the teacher's class-mean embeddings over the training set, computed
before training, which the harness does not offer yet.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.losses import kd_loss
from kdbench.methods.dkd import dkd_loss


def nd_loss(student_embedding: Tensor, teacher_embedding: Tensor, class_centers: Tensor, labels: Tensor) -> Tensor:
    """ND: mean over the batch of ``1 - <s, c_y / |c_y|> / max(|s|, |t|)``, in float32.

    It pulls the student embedding ``s`` (projected to the teacher's width) towards the direction of its class's
    teacher mean embedding ``c_y`` and its norm up to the larger of the two norms.
    """
    s, t = student_embedding.float(), teacher_embedding.float()
    direction = F.normalize(class_centers.float(), dim=1)[labels]
    scale = s.norm(dim=1).maximum(t.norm(dim=1))
    return (1 - (s * direction).sum(dim=1) / scale).mean()


def kdpp_loss(student_logits: Tensor, teacher_logits: Tensor, student_embedding: Tensor, teacher_embedding: Tensor,
              class_centers: Tensor, labels: Tensor, kd_weight: float, temperature: float, nd_weight: float) -> Tensor:
    """KD++: ``kd_weight * T² KL(p_t || p_s) + nd_weight * ND``."""
    return (kd_weight * kd_loss(student_logits, teacher_logits, temperature)
            + nd_weight * nd_loss(student_embedding, teacher_embedding, class_centers, labels))


def dkdpp_loss(student_logits: Tensor, teacher_logits: Tensor, student_embedding: Tensor, teacher_embedding: Tensor,
               class_centers: Tensor, labels: Tensor, alpha: float, beta: float, temperature: float,
               nd_weight: float) -> Tensor:
    """DKD++: ``alpha * TCKD + beta * NCKD + nd_weight * ND``."""
    return (dkd_loss(student_logits, teacher_logits, labels, alpha, beta, temperature)
            + nd_weight * nd_loss(student_embedding, teacher_embedding, class_centers, labels))
