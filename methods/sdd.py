"""SDD: scale-decoupled distillation of region logits, with a doubled weight where local and global disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, valid
from kdbench.features import ModelInfo
from kdbench.methods.dkd import _MASK_OFFSET

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def region_logits(feature: Tensor, weight: Tensor, bias: Tensor | None, scales: Sequence[int] = (1, 2, 4)) -> Tensor:
    """(B, K, N) logits of every region: the classifier on each cell's mean at each scale, scales in order.

    The map is average-pooled to the largest scale first and each scale is pooled from that, cells row-major
    (scales (1, 2, 4): N = 1 + 4 + 16 = 21, region 0 the whole map).
    """
    base = F.adaptive_avg_pool2d(feature.float(), max(scales))
    cells = torch.cat([F.adaptive_avg_pool2d(base, s).flatten(2) for s in scales], dim=2)  # (B, C, N)
    logits = torch.einsum("bcn,kc->bkn", cells, weight.float())
    return logits if bias is None else logits + bias.float().view(1, -1, 1)


def _rows(region: Tensor) -> Tensor:
    """(N·B, K) rows, region-major, of (B, K, N) region logits."""
    return region.permute(2, 0, 1).reshape(-1, region.shape[1])


def sdd_weights(teacher_regions: Tensor, labels: Tensor) -> Tensor:
    """(N·B,) weights: 2 where the teacher's correctness on a region differs from its global (region 0) one, else 1."""
    regions = teacher_regions.shape[2]
    correct = _rows(teacher_regions).argmax(dim=1) == labels.repeat(regions)
    global_correct = correct[: labels.shape[0]].repeat(regions)
    return 1.0 + (correct != global_correct).float()


def sdd_kd_loss(student_regions: Tensor, teacher_regions: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """SD-KD: the weighted sum of each region row's T²·KL(p_t || p_s), divided by N·B."""
    s, t = _rows(student_regions), _rows(teacher_regions)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2
    return (kl * sdd_weights(teacher_regions, labels)).sum() / s.shape[0]


def sdd_dkd_loss(student_regions: Tensor, teacher_regions: Tensor, labels: Tensor, alpha: float, beta: float,
                 temperature: float) -> Tensor:
    """SD-DKD: each region row's alpha·TCKD + beta·NCKD (T², divided by N·B), weighted and summed."""
    s, t = _rows(student_regions) / temperature, _rows(teacher_regions) / temperature
    target = F.one_hot(labels.repeat(teacher_regions.shape[2]), s.shape[1]).to(s.dtype)
    p_s, p_t = s.softmax(dim=1), t.softmax(dim=1)
    binary_s = torch.stack(((p_s * target).sum(1), (p_s * (1 - target)).sum(1)), dim=1)
    binary_t = torch.stack(((p_t * target).sum(1), (p_t * (1 - target)).sum(1)), dim=1)
    tckd = (binary_t * (binary_t.log() - binary_s.log())).sum(dim=1)
    log_q_s = F.log_softmax(s - _MASK_OFFSET * target, dim=1)
    log_q_t = F.log_softmax(t - _MASK_OFFSET * target, dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)
    per_row = (alpha * tckd + beta * nckd) * temperature**2 / s.shape[0]
    return (per_row * sdd_weights(teacher_regions, labels)).sum()


class _ScaleDecoupled(Distiller):
    """Region logits of both networks: each final map's cells at every scale through that network's classifier."""

    family = "logit"

    def __init__(self, params: Any, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.final_maps = True
        self.classifiers = True

    def regions(self, step: Step) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's (B, K, N) region logits."""
        s, t, scales = step.student_classifier, step.teacher_classifier, self.params.scales
        return (region_logits(step.student_final_map, s.weight, s.bias, scales),
                region_logits(step.teacher_final_map, t.weight, t.bias, scales))


@register_method("sdd_kd")
class ScaleDecoupledKD(_ScaleDecoupled):
    """Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024), on KD.

    Paper: https://arxiv.org/abs/2403.13512 (code: shicaiwei123/SDD-CVPR2024)

    The final map of each network is pooled to 1x1, 2x2 and 4x4 cells (``scales``); each cell's mean goes through
    the network's own classifier (with its bias). Every region row gets T²·KL(p_t || p_s), weight 2 where the
    teacher's region prediction is right and its global one wrong or the reverse (the code's fixed complementary
    weight), else 1; the weighted rows are summed and divided by N·B:
    ``loss = ce_weight * CE(z_s, y) + kd_weight * SD-KD``. Defaults: the code's KD setting (CE 0.1, KD 0.9, T 4)
    with scales (1, 2, 4); its resnet32x4 -> resnet8x4 run uses scales (1, 2).
    """

    @dataclass(frozen=True)
    class Params(MethodParams):
        """SD-KD's weights, temperature and scales."""

        ce_weight: float = field(default=0.1, metadata=valid(ge=0))
        kd_weight: float = field(default=0.9, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        scales: tuple[int, ...] = field(default=(1, 2, 4), metadata=valid(ge=1))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE and the weighted scale-decoupled KD term."""
        p = self.params
        s, t = self.regions(step)
        return self.with_ce(step, loss_kd=p.kd_weight * sdd_kd_loss(s, t, step.labels, p.temperature))


@register_method("sdd_dkd")
class ScaleDecoupledDKD(_ScaleDecoupled):
    """Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024), on DKD.

    Paper: https://arxiv.org/abs/2403.13512 (code: shicaiwei123/SDD-CVPR2024)

    The region rows of :class:`ScaleDecoupledKD`, each with DKD's alpha·TCKD + beta·NCKD (T², reduced by N·B),
    weighted and summed, under DKD's linear warm-up: ``loss = ce_weight * CE + ramp(warmup) * SD-DKD``.
    Defaults: the code's CIFAR-100 DKD setting (alpha 1, beta 8, T 4, warm-up 20 epochs); ImageNet: beta 0.5, T 1.
    """

    @dataclass(frozen=True)
    class Params(MethodParams):
        """SD-DKD's weights, temperature, warm-up and scales."""

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        alpha: float = field(default=1.0, metadata=valid(ge=0))
        beta: float = field(default=8.0, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        warmup: float = field(default=20.0, metadata=valid(ge=0))
        scales: tuple[int, ...] = field(default=(1, 2, 4), metadata=valid(ge=1))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """CE and the ramped scale-decoupled DKD term."""
        p = self.params
        s, t = self.regions(step)
        loss = sdd_dkd_loss(s, t, step.labels, p.alpha, p.beta, p.temperature)
        return self.with_ce(step, loss_dkd=step.ramp(p.warmup) * loss)
