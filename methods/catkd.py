"""CAT-KD: transfer of pooled, optionally normalised class activation maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def class_activation_maps(feature: Tensor, classifier_weight: Tensor) -> Tensor:
    """(B, K, H, W) class activation maps: the classifier weight as a 1x1 convolution, no bias, no ReLU.

    The authors' code keeps only ``fc.weight``, so the mean over positions of these maps are the network's logits
    without the classifier bias.
    """
    return torch.einsum("bchw,kc->bkhw", feature.float(), classifier_weight.float())


def catkd_loss(student_cams: Tensor, teacher_cams: Tensor, size: int, normalize: bool) -> Tensor:
    """Mean over B·K·r² of the squared difference of the CAMs average-pooled to r x r (``size``).

    With ``normalize`` each pooled map is L2-normalised over its r² positions first (``IF_NORMALIZE``).
    """
    s = F.adaptive_avg_pool2d(student_cams.float(), size).flatten(2)
    t = F.adaptive_avg_pool2d(teacher_cams.float(), size).flatten(2)
    if normalize:
        s, t = F.normalize(s, dim=2), F.normalize(t, dim=2)
    return (s - t).pow(2).mean()


@register_method("catkd")
class ClassAttentionTransferKD(Distiller):
    """Class Attention Transfer Based Knowledge Distillation (Guo, Yan, Li, Lin, CVPR 2023).

    Paper: https://arxiv.org/abs/2304.12777 (code: GzyAftermath/CAT-KD)

    Class activation maps of both networks (the final map before pooling through the classifier's weight as a
    1x1 convolution: no bias, no ReLU), average-pooled to ``size`` x ``size``, optionally L2-normalised over the
    positions, matched by the mean squared difference:
    ``loss = ce_weight * CE(z_s, y) + beta * mean((pool(CAM_s) - pool(CAM_t))^2)``.
    Defaults: the authors' CIFAR-100 configuration of same-family pairs (resnet32x4 -> resnet8x4: beta 15, 2x2,
    no normalisation); their ShuffleNet configurations use 4x4 with normalisation and beta 600 or 80, ImageNet
    4x4, beta 0.5. The authors' code also removes the classifier bias of both networks (their logits change);
    here the deployed networks keep their classifiers unchanged and only the maps of the loss are bias-free.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """CAT-KD's weights and map size."""

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        beta: float = field(default=15.0, metadata=valid(ge=0) | tunable(0.5, 600.0, log=True))
        size: int = field(default=2, metadata=valid(ge=1))
        normalize: bool = False

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.final_maps = True
        self.classifiers = True

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE and the weighted CAM transfer term."""
        p = self.params
        cam_s = class_activation_maps(step.student_final_map, step.student_classifier.weight)
        cam_t = class_activation_maps(step.teacher_final_map, step.teacher_classifier.weight)
        return self.with_ce(step, loss_cat=p.beta * catkd_loss(cam_s, cam_t, p.size, p.normalize))
