"""KD++ / DKD++: logit distillation plus the ND loss on the embedding's norm and direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, TeacherBatch, register_method, valid
from kdbench.features import ModelInfo
from kdbench.losses import flatten_embedding, kd_loss
from kdbench.methods.dkd import dkd_loss

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


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


class _NormAndDirection(Distiller):
    """The ND term: the projected student embedding against the teacher's class-mean embeddings.

    The class means are the teacher's pre-logits embeddings averaged per class over the training split, gathered
    in the teacher pass before training and kept as the buffer ``class_centers`` (saved with checkpoints).
    """

    family = "logit"

    def __init__(self, params: Any, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.embeddings = True
        self.teacher_pass = ("embedding",)
        width_s, width_t = student.embedding_dim, teacher.embedding_dim
        self.projector = nn.Linear(width_s, width_t) if width_s != width_t else nn.Identity()
        self.register_buffer("class_centers", torch.zeros(data.num_classes, width_t))
        self._sums = torch.zeros(data.num_classes, width_t, dtype=torch.float64)
        self._counts = torch.zeros(data.num_classes, dtype=torch.float64)

    def observe_teacher(self, batch: TeacherBatch) -> None:
        """Add the batch's teacher embeddings to their classes' sums."""
        embedding = flatten_embedding(batch.teacher_embedding).to("cpu", torch.float64)
        labels = batch.labels.to("cpu")
        self._sums.index_add_(0, labels, embedding)
        self._counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def finish_teacher_pass(self) -> None:
        """The class means over every process's share of the split."""
        device = self.class_centers.device
        sums, counts = self.context.gather(self._sums[None].to(device), self._counts[None].to(device))
        means = sums.sum(0) / counts.sum(0).clamp(min=1)[:, None]
        self.class_centers.copy_(means.to(self.class_centers.dtype))

    def nd(self, step: Step) -> Tensor:
        """ND of the step's embeddings."""
        s = self.projector(flatten_embedding(step.student_embedding))
        return nd_loss(s, flatten_embedding(step.teacher_embedding), self.class_centers, step.labels)


@register_method("kdpp")
class KDPlusPlus(_NormAndDirection):
    """Improving Knowledge Distillation via Regularizing Feature Norm and Direction (Wang et al., ECCV 2024): KD++.

    Paper: https://arxiv.org/abs/2305.17007 (code: WangYZ1608/Knowledge-Distillation-via-ND)

    ``loss = ce_weight * CE + kd_weight * T² KL(p_t || p_s) + nd_weight * ND``, ND = mean over the batch of
    ``1 - <s, c_y / |c_y|> / max(|s|, |t|)`` with ``s`` the student embedding (projected by a linear layer when
    the widths differ), ``t`` the teacher's and ``c_y`` the teacher's mean embedding of the label's class over the
    training split. Defaults: the authors' CIFAR-100 resnet32x4 -> resnet8x4 setting (KD 3.5 at T 4, ND 2);
    ImageNet resnet34 -> resnet18: KD 2.5 at T 1, ND 1.
    """

    @dataclass(frozen=True)
    class Params(MethodParams):
        """KD++'s weights and temperature."""

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=3.5, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        nd_weight: float = field(default=2.0, metadata=valid(ge=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE, KD and ND."""
        p = self.params
        return self.with_ce(step, loss_kd=p.kd_weight * kd_loss(step.student_logits, step.teacher_logits,
                                                                 p.temperature),
                            loss_nd=p.nd_weight * self.nd(step))


@register_method("dkdpp")
class DKDPlusPlus(_NormAndDirection):
    """Improving Knowledge Distillation via Regularizing Feature Norm and Direction (Wang et al., ECCV 2024): DKD++.

    Paper: https://arxiv.org/abs/2305.17007 (code: WangYZ1608/Knowledge-Distillation-via-ND)

    ``loss = ce_weight * CE + alpha * TCKD + beta * NCKD + nd_weight * ND`` (ND as in :class:`KDPlusPlus`).
    Defaults: the authors' CIFAR-100 resnet32x4 -> resnet8x4 setting (alpha 2, beta 8, T 4, ND 0.5).
    """

    @dataclass(frozen=True)
    class Params(MethodParams):
        """DKD++'s weights and temperature."""

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        alpha: float = field(default=2.0, metadata=valid(ge=0))
        beta: float = field(default=8.0, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        nd_weight: float = field(default=0.5, metadata=valid(ge=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE, DKD and ND."""
        p = self.params
        dkd = dkd_loss(step.student_logits, step.teacher_logits, step.labels, p.alpha, p.beta, p.temperature)
        return self.with_ce(step, loss_dkd=dkd, loss_nd=p.nd_weight * self.nd(step))
