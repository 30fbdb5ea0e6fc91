"""Inter-channel correlation distillation: match the channel-by-channel Gram matrices of the final maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def channel_correlation(feature: Tensor) -> Tensor:
    """(B, C, C): each sample's channel Gram matrix F Fᵀ over the positions, its rows L2-normalised."""
    flat = feature.float().flatten(2)
    return F.normalize(flat @ flat.transpose(1, 2), dim=2)


def ickd_loss(student_feature: Tensor, teacher_feature: Tensor, batch_power: int = 1) -> Tensor:
    """Sum of squared differences of the two correlation matrices, divided by ``C · B^batch_power``.

    The student map must already have the teacher's channels (its positions may differ: they are summed over).
    The authors' CIFAR code divides by C·B (``batch_power`` 1), their ImageNet code (and torchdistill's
    ``ChSimLoss``) by C·B² (``batch_power`` 2).
    """
    batch, channels = teacher_feature.shape[:2]
    diff = channel_correlation(student_feature) - channel_correlation(teacher_feature)
    return diff.pow(2).sum() / (channels * batch**batch_power)


@register_method("ickd")
class InterChannelCorrelationKD(Distiller):
    """Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation (ICCV 2021).

    Paper: https://arxiv.org/abs/2202.03680 (Liu, Huang, Lin, Xie, Wang, Chang, Liang)
    The student's final map is embedded to the teacher's channels (1x1 convolution without bias, then BatchNorm:
    the authors' ``Embed``, trained with the student and dropped from the deployed one); the row-normalised channel
    correlation matrices G = F Fᵀ of both final maps are matched:
    loss = ce_weight * CE(z_s, y) + weight * sum (G_s - G_t)² / (C · B^batch_power).
    Defaults are the authors' CIFAR-100 script (ADLab-AutoDrive/ICKD ``Cifar100/train_student.sh``:
    ``--distill ickd -a 0 -b 2.5``, CE 1, the maps before pooling, C·B); their ImageNet code divides by C·B².
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of ICKD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            weight: weight of the correlation term (``-b``).
            batch_power: the power of the batch size in the divisor (1: CIFAR code; 2: ImageNet code).
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        weight: float = field(default=2.5, metadata=valid(ge=0) | tunable(0.5, 10.0, log=True))
        batch_power: int = field(default=1, metadata=valid(ge=1, le=2))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        student.require_features(self.name)
        teacher.require_features(self.name)
        self.student_stages, self.teacher_stages = (student.num_stages - 1,), (teacher.num_stages - 1,)
        channels_s, channels_t = student.stages[-1].channels, teacher.stages[-1].channels
        self.embed = nn.Sequential(nn.Conv2d(channels_s, channels_t, 1, bias=False), nn.BatchNorm2d(channels_t))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and channel-correlation terms."""
        p = self.params
        (s,), (t,) = self.student_stages, self.teacher_stages
        student = self.embed(step.student_features[s])
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_ickd": p.weight * ickd_loss(student, step.teacher_features[t], p.batch_power),
        }
