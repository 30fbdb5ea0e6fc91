"""Multi-level logit distillation: instance-, batch- and class-level alignment of predictions at five temperatures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, kd_loss, standardize_logits

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, *, over: str) -> Tensor:
    """Squared Frobenius distance of the teacher's and the student's Gram matrices of ``P = softmax(z / T)``.

    ``over="class"``: P^T P (C x C), divided by C; ``over="batch"``: P P^T (B x B), divided by B. No T² factor.
    """
    p_s, p_t = (F.softmax(z.float() / temperature, dim=1) for z in (student_logits, teacher_logits))
    if over == "class":
        return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def low_confidence_fractions(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's low-confidence fractions: of samples, and of classes, at or below the batch median.

    A sample's confidence is its maximum probability, a class's its probability summed over the batch; the median
    is ``np.percentile(., 50)`` of the code (linear interpolation, as ``torch.quantile``).
    """
    with torch.no_grad():
        p_t = F.softmax(teacher_logits.float(), dim=1)
        confidence, class_confidence = p_t.max(dim=1).values, p_t.sum(dim=0)
        return tuple((c <= torch.quantile(c, 0.5)).float().mean() for c in (confidence, class_confidence))


def mlkd_loss(weak_s: Tensor, weak_t: Tensor, strong_s: Tensor, strong_t: Tensor, temperatures: tuple[float, ...],
              n_strong: int = 3, standardize: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The unweighted (kd, cc, bc) terms of the authors' ``KD_ours.forward_train``, summed over ``temperatures``.

    kd = sum_T f_s kd_T(weak) + sum of kd_T(strong) over the first ``n_strong`` temperatures and kd_T(weak) over
    the others; cc = sum_T f_c cc_T(weak); bc = sum_T f_s bc_T(weak); f_s, f_c the low-confidence fractions,
    kd_T = T² batchmean KL on logits z-scored per row when ``standardize`` (the kd terms only).
    """
    sample_fraction, class_fraction = low_confidence_fractions(weak_t)
    z = (lambda x: standardize_logits(x)) if standardize else (lambda x: x.float())
    ws, wt, ss, st = z(weak_s), z(weak_t), z(strong_s), z(strong_t)
    kd = sum(kd_loss(ws, wt, t) * sample_fraction + kd_loss(*((ss, st) if i < n_strong else (ws, wt)), t)
             for i, t in enumerate(temperatures))
    cc = sum(correlation_loss(weak_s, weak_t, t, over="class") for t in temperatures) * class_fraction
    bc = sum(correlation_loss(weak_s, weak_t, t, over="batch") for t in temperatures) * sample_fraction
    return kd, cc, bc


@register_method("mlkd")
class MLKD(Distiller):
    """Multi-Level Logit Distillation (Jin, Wang, Lin, CVPR 2023).

    Paper: https://openaccess.thecvf.com/content/CVPR2023/html/Jin_Multi-Level_Logit_Distillation_CVPR_2023_paper.html
    Code: https://github.com/Jin-Ying/Multi-Level-Logit-Distillation (``KD_ours.forward_train``), on a weak view
    (the main batch) and a strong RandAugment-style view of it (``step.views["strong"]``):
    loss = ce_weight * (CE(z_s^weak, y) + CE(z_s^strong, y)) + kd_weight * (kd + cc + bc), with kd the
    instance-level T² KL, cc the class-correlation and bc the batch-correlation (Gram-matrix) terms of
    :func:`mlkd_loss`, each summed over T in {4, 3, 5, 2, 6} (the configured T plus the code's fixed four).

    This follows the authors' code where it differs from the paper: the confidence masks (teacher's maximum
    probability, and its class probability summed over the batch, at or below the batch median) multiply terms
    that are already batch-reduced, so each masked term is the whole-batch term times the masked fraction
    (about one half), not a per-sample selection; every term uses the weak view except the strong-view kd at
    T in {4, 3, 5} (at T 2 and 6 the code's "strong" kd reads the weak logits again); the strong-view cc and bc
    are computed and dropped by the code, so they are left out here. ``standardize`` z-scores the logits inside
    the kd terms (Sun et al., CVPR 2024, https://arxiv.org/abs/2403.01427, as their ``MLKD.py``); the masks and
    the correlation terms keep the raw logits. The code's CE uses hard labels; its kd weight multiplies cc and bc.
    """

    family = "logit"
    version = 1

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of MLKD.

        Attributes:
            temperature: the configured temperature (``KD.TEMPERATURE``; the first of the five).
            extra_temperatures: the code's fixed temperatures; the first two of them also get a strong-view kd.
            ce_weight: weight of each view's cross-entropy with the labels.
            kd_weight: weight of the kd, cc and bc sums.
            standardize: z-score the logits in the kd terms (logit standardisation, Sun et al. 2024).
        """

        temperature: float = field(default=4.0, metadata=valid(gt=0) | tunable(1.0, 8.0))
        extra_temperatures: tuple[float, ...] = field(default=(3.0, 5.0, 2.0, 6.0), metadata=valid(gt=0))
        ce_weight: float = field(default=0.1, metadata=valid(ge=0))
        kd_weight: float = field(default=0.9, metadata=valid(ge=0))
        standardize: bool = False

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.extra_views = ("strong",)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted two-view cross-entropy and the kd, cc and bc sums."""
        p, strong = self.params, step.views["strong"]
        kd, cc, bc = mlkd_loss(step.student_logits, step.teacher_logits, strong.student_logits, strong.teacher_logits,
                               (p.temperature, *p.extra_temperatures), standardize=p.standardize)
        ce = cross_entropy(step.student_logits, step.labels) + cross_entropy(strong.student_logits, step.labels)
        return {"loss_ce": p.ce_weight * ce, "loss_kd": p.kd_weight * kd, "loss_cc": p.kd_weight * cc,
                "loss_bc": p.kd_weight * bc}
