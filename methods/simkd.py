"""SimKD: the student reuses the teacher's classifier behind a projector trained by feature matching."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import (
    DeployedNetwork,
    Distiller,
    MethodParams,
    RunContext,
    Step,
    TeacherParts,
    register_method,
    valid,
)
from kdbench.errors import ModelError
from kdbench.features import ModelInfo

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def simkd_projector(student_channels: int, teacher_channels: int, factor: int = 2) -> nn.Sequential:
    """The SimKD projector: 1x1 conv, 3x3 conv, 1x1 conv to the teacher's channels, each with BN and ReLU.

    The hidden width is ``teacher_channels // factor``; the convolutions have no bias (Chen et al.'s
    ``models/util.py:SimKD`` with its default factor 2).
    """
    hidden = teacher_channels // factor
    return nn.Sequential(
        nn.Conv2d(student_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels), nn.ReLU(inplace=True),
    )


def simkd_loss(projected_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between the projected student map and the teacher's final map (SimKD's only loss)."""
    return F.mse_loss(projected_student.float(), teacher_feature.float())


def reused_classifier_logits(projected_student: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The deployed student's logits: the teacher's classifier on the average-pooled projected map."""
    return F.linear(projected_student.float().mean(dim=(2, 3)), weight.float(), None if bias is None else bias.float())


class SimKDHead(nn.Module):
    """SimKD's deployed head: the final map (pooled to ``size`` when larger), projected, the teacher's classifier."""

    def __init__(self, projector: nn.Module, classifier: nn.Linear, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.projector, self.classifier, self.size = projector, classifier, size

    def forward(self, final_map: Tensor) -> Tensor:
        """The logits."""
        if self.size is not None and final_map.shape[2] > self.size[0]:
            final_map = F.adaptive_avg_pool2d(final_map, self.size)
        return reused_classifier_logits(self.projector(final_map), self.classifier.weight, self.classifier.bias)


@register_method("simkd")
class SimKD(Distiller):
    """Knowledge Distillation with the Reused Teacher Classifier (Chen, Mei, Zhang, Wang, Feng, Chen; CVPR 2022).

    Paper: https://arxiv.org/abs/2203.14001 (code: DefangChen/SimKD, ``models/util.py:SimKD``)
    A projector (:func:`simkd_projector`) maps the student's final map to the teacher's channels, trained only by
    ``beta * MSE(P(f_s), f_t)`` (the authors' ``-c 0 -d 0 -b 1``: no cross-entropy); the larger of the two maps is
    first average-pooled to the other's size. The deployed network is the student's backbone, the projector and a
    frozen copy of the teacher's classifier on the pooled projection: it counts, is measured, saved and exported as
    that (the student's own classifier is dropped). ``train_top1`` in the history is the student's own, untrained
    classifier's; every evaluation (validation, test) goes through the deployed network.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """SimKD's weight and projector width.

        Attributes:
            beta: weight of the feature-matching MSE.
            factor: the projector's hidden width is the teacher's channels divided by it.
        """

        beta: float = field(default=1.0, metadata=valid(ge=0))
        factor: int = field(default=2, metadata=valid(ge=1))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        if teacher is None or teacher.num_features // params.factor < 1:
            raise ModelError(f"simkd needs a teacher with at least factor={params.factor} final channels")
        self.final_maps = True
        self.classifiers = True
        self.projector = simkd_projector(student.num_features, teacher.num_features, params.factor)
        last = teacher.stages[-1] if teacher.stages else None  # the teacher's final map has its last stage's size
        self.teacher_size = (last.height, last.width) if last is not None else None
        self.input_size = (data.in_chans, data.image_size, data.image_size)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """The weighted MSE between the projected student map and the teacher's, at the smaller of the two sizes."""
        source, target = step.student_final_map, step.teacher_final_map
        if source.shape[2] > target.shape[2]:
            source = F.adaptive_avg_pool2d(source, target.shape[2:])
        else:
            target = F.adaptive_avg_pool2d(target, source.shape[2:])
        return {"loss_simkd": self.params.beta * simkd_loss(self.projector(source), target)}

    def deployed_student(self, student: nn.Module, teacher: TeacherParts) -> nn.Module:
        """The student's backbone, the projector and the teacher's classifier."""
        return DeployedNetwork(student, SimKDHead(self.projector, teacher.classifier, self.teacher_size),
                               self.input_size)
