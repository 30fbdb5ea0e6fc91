"""Masked generative distillation: regenerate the teacher's final map from a channel-masked student map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, resize_map
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def mgd_distance(student_feature: Tensor, teacher_feature: Tensor, generation: nn.Module, keep: Tensor) -> Tensor:
    """``sum (generation(student * keep) - teacher)² / B``, the squared error summed over every element.

    ``student_feature`` already has the teacher map's shape; ``keep`` (B, C, 1, 1) is 1 for the channels that stay
    and 0 for the masked ones.
    """
    generated = generation(student_feature * keep.to(student_feature.dtype))
    return (generated.float() - teacher_feature.float()).pow(2).sum() / teacher_feature.shape[0]


@register_method("mgd")
class MaskedGenerativeDistillation(Distiller):
    """Masked Generative Distillation (Yang, Li, Shao, Shi, Yuan, Yuan, ECCV 2022), classification variant.

    Paper: https://arxiv.org/abs/2205.01529
    Random whole channels of the student's final map (each with probability ``mask_ratio``, drawn anew each step
    from the run's own generator) are zeroed, and a generation block (3x3 conv, ReLU, 3x3 conv, with biases)
    must rebuild the teacher's final map from what is left:
    loss = ce_weight * CE(z_s, y) + alpha * sum (G(align(F_s) · M) - F_t)² / B.
    ``align`` is a 1x1 convolution with bias when the channel counts differ (identity otherwise); a student map of
    another size is first resized to the teacher's (the authors require equal sizes). Defaults are the authors'
    ImageNet classification configs (yzd-v/MGD ``cls/configs/distillers/mgd/``: ``alpha_mgd=0.00007``,
    ``lambda_mgd=0.15``, the student's own CE 1). The classification code masks channels (its pixel mask is
    commented out) and applies alpha inside the loss. The align and generation blocks count as ``extra_params_m``.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of MGD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            alpha: weight of the generation distance (``alpha_mgd``).
            mask_ratio: probability of masking each channel (``lambda_mgd``).
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        alpha: float = field(default=7e-5, metadata=valid(ge=0) | tunable(1e-5, 1e-3, log=True))
        mask_ratio: float = field(default=0.15, metadata=valid(ge=0, lt=1) | tunable(0.05, 0.75))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        student.require_features(self.name)
        teacher.require_features(self.name)
        self.student_stages, self.teacher_stages = (student.num_stages - 1,), (teacher.num_stages - 1,)
        s, t = student.stages[-1], teacher.stages[-1]
        self.size = (t.height, t.width)
        self.align: nn.Module = nn.Conv2d(s.channels, t.channels, 1) if s.channels != t.channels else nn.Identity()
        self.generation = nn.Sequential(nn.Conv2d(t.channels, t.channels, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(t.channels, t.channels, 3, padding=1))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and masked-generation terms (the mask is drawn here, from the run's generator)."""
        p = self.params
        (s,), (t,) = self.student_stages, self.teacher_stages
        student = self.align(resize_map(step.student_features[s], self.size))
        teacher = step.teacher_features[t]
        draw = torch.rand(teacher.shape[0], teacher.shape[1], 1, 1, device=teacher.device)
        keep = (draw >= p.mask_ratio).float()
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_mgd": p.alpha * mgd_distance(student, teacher, self.generation, keep),
        }
