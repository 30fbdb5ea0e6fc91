"""DIST: distillation by correlation of the predicted distributions, across classes and across the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, valid
from kdbench.losses import cross_entropy


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    It is the cosine of the mean-centred rows, with ``eps`` added to the product of their norms (as the authors'
    code computes it).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, temperature: float) -> Tensor:
    """``T² (beta * inter + gamma * intra)`` on ``y = softmax(z / T)``, in float32.

    inter = 1 - mean over samples of the Pearson correlation of student and teacher predictions (across classes);
    intra = 1 - mean over classes of the Pearson correlation of their class columns (across the batch).
    """
    y_s = (student_logits.float() / temperature).softmax(dim=1)
    y_t = (teacher_logits.float() / temperature).softmax(dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


@register_method("dist")
class DIST(Distiller):
    """Knowledge Distillation from A Stronger Teacher (Huang, You, Wang, Qian, Xu, NeurIPS 2022).

    Paper: https://arxiv.org/abs/2205.10536
    Relaxes KL matching to correlation matching of ``y = softmax(z / tau)``: the inter-class relation (per sample,
    across classes) and the intra-class relation (per class, across the batch), each ``1 - Pearson``:
    loss = ce_weight * CE(z_s, y) + kd_weight * tau² (beta * inter + gamma * intra).
    Defaults are the authors' CIFAR-100 setting (hunto/DIST_KD with hunto/image_classification_sota,
    ``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4``, ``ori_loss_weight 1``, ``kd_loss_weight 2``;
    beta = gamma = 1 in ``lib/models/losses/kd_loss.py``). Their ImageNet setting uses tau = 1 with the same weights.
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of DIST.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the DIST term.
            beta: weight of the inter-class relation.
            gamma: weight of the intra-class relation.
            temperature: tau, the softening of both predictions.
        """

        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=2.0, metadata=valid(ge=0))
        beta: float = field(default=1.0, metadata=valid(ge=0))
        gamma: float = field(default=1.0, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and DIST terms."""
        p = self.params
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_kd": p.kd_weight * dist_loss(step.student_logits, step.teacher_logits, p.beta, p.gamma,
                                               p.temperature),
        }
