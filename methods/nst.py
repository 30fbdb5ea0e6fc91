"""Neuron selectivity transfer: an MMD between the distributions of the two models' channel activation patterns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, pool_to_common_size

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch and every channel pair (i, j) of ``<a_i, b_j>²`` for (B, C, HW) inputs."""
    with torch.autocast(a.device.type, enabled=False):
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Sum over the stage pairs of the squared MMD with the polynomial kernel ``k(x, y) = (x^T y)²``.

    Each channel's map is flattened and L2-normalised over the positions (its "selectivity pattern"); then
    ``MMD² = mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`` over all pairs of channels of the same sample. Where
    the maps of a pair differ in size, the larger is average-pooled to the smaller's size; channel counts may
    differ. Summed over three stages it equals the reference key ``nst_3stages`` (mdistiller's ``nst_loss``,
    RepDistiller's ``NSTLoss``); the kernel is computed as a batched Gram matrix instead of their broadcast
    product, which needs B·C_s·C_t·HW memory.
    """
    total = torch.zeros((), device=student_features[0].device)
    for f_s, f_t in zip(student_features, teacher_features, strict=True):
        f_s, f_t = pool_to_common_size(f_s.float(), f_t.detach().float())
        s = F.normalize(f_s.flatten(2), dim=2)
        t = F.normalize(f_t.flatten(2), dim=2)
        total = total + (polynomial_kernel_mean(t, t) + polynomial_kernel_mean(s, s)
                         - 2 * polynomial_kernel_mean(s, t))
    return total


@register_method("nst")
class NST(Distiller):
    """Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang, Wang, arXiv 2017).

    Paper: https://arxiv.org/abs/1707.01219
    loss = ce_weight * CE(z_s, y) + weight * sum over matched stages of MMD²(S, T), where S and T are the sets of
    the student's and the teacher's channel maps of a sample (each flattened over the positions and L2-normalised)
    and the MMD uses the polynomial kernel k(x, y) = (x^T y)² (the paper's d = 2, c = 0), averaged over the batch
    (:func:`nst_loss`).

    Stages and weights: the CRD benchmark's (RepDistiller ``feat[1:-1]``, ``-a 0 -b 50``; mdistiller CE 1,
    NST 50): every stage map but the stem. kdbench pairs the stages of the model with fewer stages, all but its
    first, with the other model's stage of nearest relative depth (:func:`kdbench.features.shared_depths`). No
    trainable parameters.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of NST, after the stage selection (:class:`StageSelection`).

        Attributes:
            weight: weight of the MMD term (summed over the matched stages).
            ce_weight: weight of the cross-entropy with the labels.
        """

        weight: float = field(default=50.0, metadata=valid(ge=0) | tunable(5.0, 500.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.pairs = self.tap_stage_pairs(student, teacher)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and NST terms."""
        return self.with_ce(step, loss_nst=self.params.weight * nst_loss(*self.paired_maps(step)))
