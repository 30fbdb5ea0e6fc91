"""ReviewKD: each teacher stage is matched by a fusion of the student's same and deeper stages (knowledge review)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import flatten_embedding

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def hcl_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss summed over pairs of equal-shape maps (reference key ``reviewkd_hcl_3stages``).

    Per pair: (MSE + sum_j 2^-j MSE of both maps average-pooled to l_j x l_j) / (1 + sum_j 2^-j) over the levels
    l = 4, 2, 1 smaller than the map's side, j = 1, 2, ... counting the levels used (mdistiller's ``hcl_loss``).
    """
    total = torch.zeros((), device=student_features[0].device)
    for f_s, f_t in zip(student_features, teacher_features, strict=True):
        f_s, f_t = f_s.float(), f_t.float()
        loss, weight, norm = F.mse_loss(f_s, f_t), 1.0, 1.0
        for level in [lv for lv in (4, 2, 1) if lv < min(f_s.shape[-2:])]:
            weight, norm = weight / 2, norm + weight / 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level))
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion: a student map, fused with the deeper levels' residual, mapped to a teacher stage."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, out_size: tuple[int, int],
                 fuse: bool) -> None:
        super().__init__()
        self.out_size = out_size
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """The output in the teacher stage's shape, and the fused map handed to the next shallower level."""
        x = self.reduce(x)
        if self.attention is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.attention(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[-2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="nearest")
        return self.out(x), x


@register_method("reviewkd")
class ReviewKD(Distiller):
    """Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao, Jia, CVPR 2021).

    Paper: https://arxiv.org/abs/2104.09044
    loss = ce_weight * CE(z_s, y) + weight * min(epoch / warmup_epochs, 1) * sum_i HCL(ABF_i, F_t^i) with 1-based
    epochs (:meth:`kdbench.distiller.Step.ramp`). Going from the deepest level to the shallowest, ABF_i reduces the
    student's map i (1x1 conv + BN), fuses it with the deeper levels' result (nearest upsampling, two sigmoid
    attention maps from a 1x1 conv), resizes it (nearest) to teacher stage i and maps it there (3x3 conv + BN);
    HCL (:func:`hcl_loss`) compares it with the teacher's map at several pooling levels.

    As in mdistiller and the authors' code: every stage map but the stem plus the pooled pre-logits features as a
    1x1 level (``pooled_level``), hidden width min(512, the deepest student input's width), CE 1, weight 5 (the
    CIFAR-100 setting of mdistiller and of 5 of the authors' 8 pairs: resnet56/20 used 0.6, resnet110/32 1.0,
    resnet32x4/ShuffleNetV2 8.0), a 20-epoch warm-up. The authors take the teacher's stage maps before the final
    ReLU; kdbench takes the stage outputs that timm's ``forward_intermediates`` gives (after it, for ReLU
    networks). Stages: those of the model with fewer stages but its first, each paired with the other model's
    stage of nearest relative depth (:func:`kdbench.features.shared_depths`). The ABFs count as extra parameters.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of ReviewKD, after the stage selection (:class:`StageSelection`).

        Attributes:
            weight: weight of the review (HCL) term after the warm-up.
            ce_weight: weight of the cross-entropy with the labels.
            warmup_epochs: epochs over which the review weight ramps up linearly (0: none).
            pooled_level: add the pooled pre-logits features of both models as the deepest, 1x1 level.
            max_mid_channels: cap of the ABFs' hidden width.
        """

        weight: float = field(default=5.0, metadata=valid(ge=0) | tunable(0.5, 10.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        warmup_epochs: int = field(default=20, metadata=valid(ge=0))
        pooled_level: bool = True
        max_mid_channels: int = field(default=512, metadata=valid(ge=1))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.pairs = self.tap_stage_pairs(student, teacher)
        self.embeddings = params.pooled_level
        ins = [student.stages[i].channels for i, _ in self.pairs]
        outs = [(teacher.stages[j].channels, (teacher.stages[j].height, teacher.stages[j].width))
                for _, j in self.pairs]
        if params.pooled_level:
            ins.append(student.embedding_dim)
            outs.append((teacher.embedding_dim, (1, 1)))
        mid = min(params.max_mid_channels, ins[-1])
        self.abfs = nn.ModuleList(ABF(c_in, mid, c_out, size, fuse=i < len(ins) - 1)
                                  for i, (c_in, (c_out, size)) in enumerate(zip(ins, outs, strict=True)))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and review (HCL) terms."""
        p = self.params
        xs = [step.student_features[s] for s, _ in self.pairs]
        targets = [step.teacher_features[t] for _, t in self.pairs]
        if p.pooled_level:
            xs.append(flatten_embedding(step.student_embedding)[:, :, None, None])
            targets.append(flatten_embedding(step.teacher_embedding)[:, :, None, None])
        outputs, residual = [], None
        for x, abf in zip(reversed(xs), reversed(self.abfs), strict=True):
            out, residual = abf(x, residual)
            outputs.insert(0, out)
        review = p.weight * step.ramp(p.warmup_epochs) * hcl_loss(outputs, targets)
        return self.with_ce(step, loss_review=review)
