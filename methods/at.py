"""Attention transfer: the student matches the teacher's spatial attention maps at several stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, StageSelection, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, pool_to_common_size

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Q = mean over channels of |F|^p, flattened to (N, H*W) and L2-normalised per sample."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Mean over the batch and the positions of (Q_s - Q_t)², the larger map average-pooled to the smaller's size."""
    student_feature, teacher_feature = pool_to_common_size(student_feature, teacher_feature)
    return (attention_map(student_feature, p) - attention_map(teacher_feature, p)).pow(2).mean()


@register_method("at")
class AttentionTransfer(Distiller):
    """Paying More Attention to Attention (Zagoruyko, Komodakis, ICLR 2017).

    Paper: https://arxiv.org/abs/1612.03928
    loss = ce_weight * CE(z_s, y) + beta * sum over matched stages j of mean_{n, k} (Q_s^j - Q_t^j)²_{n, k},
    with Q = normalize(flatten(mean_c |F_c|^p)) per sample (p = 2) and, where the two maps of a pair differ in
    size, the larger feature map average-pooled to the smaller's size before Q is taken.

    Scale: this is the normalisation of the CRD code (Tian et al., 2020) and of mdistiller -- squared
    differences averaged over batch and positions -- which their beta = 1000 assumes. The paper writes
    beta/2 * ||Q_s/||Q_s|| - Q_t/||Q_t|| ||_2 per stage (a norm, not averaged over positions), a different scale:
    its beta does not carry over to this loss.

    Stages: by default the stages of the model with fewer stages, all but its first (the stem), each paired with
    the other model's stage of nearest relative depth (:func:`kdbench.features.shared_depths`). The CRD code
    takes its feature list without the stem and without the pooled vector (``feat[1:-1]``), i.e. every stage
    map but the stem; timm's ``feature_info`` lists no pooled vector, so dropping the first stage is that
    choice. ``depths`` or explicit ``student_indices`` / ``teacher_indices`` override it. The method adds no
    trainable parameters.
    """

    family = "feature"

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of attention transfer, after the stage selection (:class:`StageSelection`).

        Attributes:
            beta: weight of the attention term (summed over the matched stages).
            ce_weight: weight of the cross-entropy with the labels.
            p: exponent of the attention map.
        """

        beta: float = field(default=1000.0, metadata=valid(ge=0) | tunable(100.0, 10000.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        p: float = field(default=2.0, metadata=valid(gt=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo) -> None:
        super().__init__(params, student, teacher, data)
        self.pairs = self.tap_stage_pairs(student, teacher)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and attention terms."""
        p = self.params
        at = self.sum_over_pairs(step, lambda s, t: attention_loss(s, t, p.p))
        return {"loss_ce": p.ce_weight * F.cross_entropy(step.student_logits, step.labels), "loss_at": p.beta * at}
