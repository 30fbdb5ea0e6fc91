"""SimKD: the student reuses the teacher's classifier behind a projector trained by feature matching.

Loss pieces only: the method class needs the teacher's classifier and defines the deployed student (backbone,
projector and the teacher's classifier), capabilities the harness does not offer yet.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
