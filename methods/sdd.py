"""SDD: scale-decoupled distillation of region logits, with a doubled weight where local and global disagree.

Loss pieces only: the method classes need both networks' classifiers and final maps before pooling, which the
harness does not offer yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.methods.dkd import _MASK_OFFSET


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
