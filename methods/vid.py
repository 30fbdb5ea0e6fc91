"""Variational information distillation: a Gaussian likelihood of the teacher's stage maps given the student's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, pool_to_common_size

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def vid_loss(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean over elements of ``0.5 * ((mu - t)² / var + log var)``, ``var_c = softplus(log_scale_c) + eps``.

    ``mean`` is the regressor's output on the student map, ``target`` the teacher's map (same shape) and
    ``log_scale`` the per-channel variance parameter. Summed over three stages it equals the reference key
    ``vid_3stages`` (mdistiller's ``vid_loss``, RepDistiller's and torchdistill's ``VIDLoss``).
    """
    var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean.float() - target.float()).pow(2) / var + var.log())).mean()


def regressor(in_channels: int, out_channels: int) -> nn.Sequential:
    """The mean regressor of the authors' code: 1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, no biases."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1, bias=False))


@register_method("vid")
class VID(Distiller):
    """Variational Information Distillation for Knowledge Transfer (Ahn, Hu, Damianou, Lawrence, Dai, CVPR 2019).

    Paper: https://arxiv.org/abs/1904.05835
    loss = ce_weight * CE(z_s, y) + weight * sum over matched stages of
    mean_{b,c,h,w} 0.5 * ((mu_c(F_s) - F_t)² / var_c + log var_c): the negative log-likelihood (up to a constant)
    of the teacher's map under a Gaussian whose mean mu is regressed from the student's map and whose
    per-channel variance var_c = softplus(alpha_c) + eps is learned; maximising it maximises a variational lower
    bound on the mutual information between the two maps.

    As in the authors' code (kept by RepDistiller and mdistiller): the regressor is 1x1 conv - ReLU - 1x1 conv -
    ReLU - 1x1 conv to the teacher's channels (hidden width = the teacher's channels), alpha starts where var =
    ``init_pred_var`` (5), eps = 1e-5, and where the maps of a pair differ in size the larger is average-pooled
    to the smaller's before the regressor. Regressors and variances train with the student (RepDistiller's
    optimiser does; mdistiller keeps the variances in a plain list and never trains them).

    Stages and weights: the CRD benchmark's (RepDistiller ``feat[1:-1]``, ``-a 0 -b 1``): every stage map but the
    stem, CE 1, VID 1. kdbench pairs the stages of the model with fewer stages, all but its first, with the other
    model's stage of nearest relative depth (:func:`kdbench.features.shared_depths`).
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of VID, after the stage selection (:class:`StageSelection`).

        Attributes:
            weight: weight of the VID term (summed over the matched stages).
            ce_weight: weight of the cross-entropy with the labels.
            init_pred_var: initial variance of every channel.
            eps: floor added to the softplus variance.
        """

        weight: float = field(default=1.0, metadata=valid(ge=0) | tunable(0.1, 10.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        init_pred_var: float = field(default=5.0, metadata=valid(gt=0))
        eps: float = field(default=1e-5, metadata=valid(gt=0))

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.eps < self.init_pred_var:
                raise ValueError(f"need 0 < eps < init_pred_var (got {self.eps}, {self.init_pred_var})")

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.pairs = self.tap_stage_pairs(student, teacher)
        self.regressors = nn.ModuleList(regressor(student.stages[i].channels, teacher.stages[j].channels)
                                        for i, j in self.pairs)
        alpha = math.log(math.expm1(params.init_pred_var - params.eps))  # softplus(alpha) + eps = init_pred_var
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((teacher.stages[j].channels,), alpha))
                                           for _, j in self.pairs)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and VID terms."""
        p = self.params
        vid = torch.zeros((), device=step.student_logits.device)
        for (s, t), reg, log_scale in zip(self.pairs, self.regressors, self.log_scales, strict=True):
            f_s, f_t = pool_to_common_size(step.student_features[s], step.teacher_features[t])
            vid = vid + vid_loss(reg(f_s), f_t, log_scale, p.eps)
        return self.with_ce(step, loss_vid=p.weight * vid)
