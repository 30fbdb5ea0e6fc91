"""WKD-F: Wasserstein distance between per-cell Gaussians (mean, diagonal std) of the final feature maps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.errors import ConfigError
from kdbench.features import FeatureAdapter, ModelInfo
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def cell_statistics(feature: Tensor, grid: int, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(B, C, grid, grid) means and standard deviations ``sqrt(unbiased var + eps)`` over each cell's positions.

    Cells are adaptive-pooling windows: rows ``floor(i H / g)`` to ``ceil((i + 1) H / g)``, likewise columns.
    """
    height, width = feature.shape[-2:]
    means, stds = [], []
    for i in range(grid):
        rows = slice(math.floor(i * height / grid), math.ceil((i + 1) * height / grid))
        for j in range(grid):
            cell = feature[:, :, rows, math.floor(j * width / grid):math.ceil((j + 1) * width / grid)].flatten(2)
            means.append(cell.mean(dim=2))
            stds.append(torch.sqrt(cell.var(dim=2) + eps))
    shape = (feature.shape[0], feature.shape[1], grid, grid)
    return torch.stack(means, dim=2).reshape(shape), torch.stack(stds, dim=2).reshape(shape)


def wkd_feature_terms(student_feature: Tensor, teacher_feature: Tensor, grid: int = 1,
                      eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """The mean and covariance parts of the Gaussian 2-Wasserstein distance, each summed and divided by g²·B.

    For diagonal Gaussians W² = |mu_s - mu_t|² + |sigma_s - sigma_t|²; both maps (B, C, H, W) in float32.
    """
    mu_s, sigma_s = cell_statistics(student_feature.float(), grid, eps)
    mu_t, sigma_t = cell_statistics(teacher_feature.float(), grid, eps)
    scale = grid**2 * teacher_feature.shape[0]
    return (mu_s - mu_t).pow(2).sum() / scale, (sigma_s - sigma_t).pow(2).sum() / scale


def cosine_decayed(weight: float, epoch: int, epochs: int, start: float) -> float:
    """The authors' weight schedule: ``weight`` up to epoch ``start``, then a cosine decay to 0 at the last epoch.

    Epochs count from 1 (``epoch`` of ``epochs``); a run of at most ``start`` epochs keeps the full weight.
    """
    if epoch <= start or epochs <= start:
        return weight
    return 0.5 * weight * (1 + math.cos((epoch - start) / (epochs - start) * math.pi))


@register_method("wkd_f")
class WassersteinFeatureKD(Distiller):
    """Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge Distillation (NeurIPS 2024): WKD-F.

    Paper: https://arxiv.org/abs/2412.08139 (Lv, Yang, Li)
    Each cell of a g x g grid over the final map is modelled as a Gaussian with diagonal covariance (the channel
    means and standard deviations over its positions); the student's map, projected to the teacher's channels and
    size (1x1 conv, BN, ReLU: the authors' ``ConvReg``), is matched by the closed-form 2-Wasserstein distance:
    loss = ce_weight * CE(z_s, y) + w(epoch) * (mean_cov_ratio * mean + cov). w is cosine-decayed to 0 over the
    epochs after ``decay_epoch`` (the paper's epochs, counted from 1: it does not stretch with the run's length, so a
    run of at most 150 epochs keeps the full weight). Defaults are the authors' CIFAR-100 resnet32x4 ->
    resnet8x4 config (JiamingLv/WKD ``configs/cifar100/wkd_f/res32x4_res8x4.yaml``: weight 0.08, ratio 4, grid 1,
    decay after epoch 150 of 240); their ImageNet configs use grid 4 and ratio 2. The code uses the unbiased
    variance. The distilled teacher stage is the last one whose cells span at least two positions per side (the final
    map at the usual input sizes).
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of WKD-F.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            weight: weight of the Wasserstein term (``WKD_FEAT_WEIGHT``).
            mean_cov_ratio: weight of the mean part relative to the covariance part (``MEAN_COV_RATIO``).
            grid: cells per side of the spatial grid (``SPATIAL_GRID``).
            eps: added to the variance before the square root.
            decay_epoch: the epoch (counted from 1) after which the weight decays (``COSINE_DECAY_EPOCH``).
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        weight: float = field(default=0.08, metadata=valid(ge=0) | tunable(0.01, 1.0, log=True))
        mean_cov_ratio: float = field(default=4.0, metadata=valid(ge=0) | tunable(1.0, 8.0))
        grid: int = field(default=1, metadata=valid(ge=1))
        eps: float = field(default=1e-5, metadata=valid(gt=0))
        decay_epoch: float = field(default=150.0, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        student.require_features(self.name)
        teacher.require_features(self.name)
        cells = [i for i, s in enumerate(teacher.stages) if min(s.height, s.width) >= 2 * params.grid]
        if not cells:
            raise ConfigError(f"wkd_f: teacher {teacher.name!r} has no stage with {2 * params.grid} positions per "
                              f"side at this input size (grid {params.grid})")
        t = cells[-1]
        self.student_stages, self.teacher_stages = (student.num_stages - 1,), (t,)
        self.adapter = FeatureAdapter(student.stages[-1], teacher.stages[t], project=True)
        self.relu = nn.ReLU()

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and the (decayed) Wasserstein feature term."""
        p = self.params
        (s,), (t,) = self.student_stages, self.teacher_stages
        mean, cov = wkd_feature_terms(self.relu(self.adapter(step.student_features[s])), step.teacher_features[t],
                                      p.grid, p.eps)
        weight = cosine_decayed(p.weight, step.epoch + 1, step.epochs, p.decay_epoch)
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_wkd": weight * (p.mean_cov_ratio * mean + cov),
        }
