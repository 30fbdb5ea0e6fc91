"""Teacher-free KD with a hand-designed virtual teacher (Tf-KD_reg)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, tunable, valid


def virtual_teacher(labels: Tensor, num_classes: int, correct_prob: float, temperature: float) -> Tensor:
    """The softened virtual teacher: ``softmax(p_d / T)`` with p_d = ``correct_prob`` on the label, the rest uniform.

    As in the authors' code, the temperature softens the hand-designed *probabilities* p_d (not logits).
    """
    rest = (1.0 - correct_prob) / max(1, num_classes - 1)
    p_d = torch.full((len(labels), num_classes), rest, dtype=torch.float32, device=labels.device)
    p_d.scatter_(1, labels[:, None], correct_prob)
    return F.softmax(p_d / temperature, dim=1)


def virtual_teacher_kl(student_logits: Tensor, labels: Tensor, correct_prob: float, temperature: float) -> Tensor:
    """KL(virtual teacher || softmax(z_s)), summed over classes and averaged over the batch (student at T = 1)."""
    target = virtual_teacher(labels, student_logits.shape[1], correct_prob, temperature)
    log_p_student = F.log_softmax(student_logits.float(), dim=1)
    return F.kl_div(log_p_student, target, reduction="batchmean")


@register_method("tfkd")
class TeacherFreeKD(Distiller):
    """Revisiting Knowledge Distillation via Label Smoothing Regularization (Yuan, Tay, Li, Wang, Feng, CVPR 2020).

    Paper: https://arxiv.org/abs/1909.11723 (Sec. 5, Tf-KD_reg: the teacher-free variant with a virtual teacher).
    loss = (1 - alpha) CE(z_s, y) + alpha * multiplier * KL(softmax(p_d / T) || softmax(z_s)), with p_d = a on the
    correct class and (1 - a) / (K - 1) on each other class. Defaults from the authors' code
    (github.com/yuanli2333/Teacher-free-Knowledge-Distillation): a = 0.99 (``my_loss_function.py``), and T = 20,
    alpha = 0.1, multiplier = 100 of its ResNet18 CIFAR-100 setting (``experiments/base_experiments/
    base_resnet18/params.json``). That code averages the KL over batch *and* classes; kdbench averages over the
    batch only, so its ``multiplier`` is the official one divided by K: 100 / 100 = 1.
    """

    family = "self"
    needs_teacher = False

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of Tf-KD_reg.

        Attributes:
            correct_prob: a, the virtual teacher's probability on the correct class.
            temperature: T, softening of the virtual teacher's distribution.
            alpha: share of the virtual-teacher term (1 - alpha goes to the cross-entropy with the labels).
            multiplier: scale of the batch-mean KL term.
        """

        correct_prob: float = field(default=0.99, metadata=valid(gt=0, le=1) | tunable(0.5, 0.99))
        temperature: float = field(default=20.0, metadata=valid(gt=0) | tunable(1.0, 40.0, log=True))
        alpha: float = field(default=0.1, metadata=valid(ge=0, le=1) | tunable(0.05, 0.95))
        multiplier: float = field(default=1.0, metadata=valid(ge=0))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and virtual-teacher terms."""
        p = self.params
        return {
            "loss_ce": (1 - p.alpha) * F.cross_entropy(step.student_logits, step.labels),
            "loss_reg": p.alpha * p.multiplier * virtual_teacher_kl(step.student_logits, step.labels,
                                                                     p.correct_prob, p.temperature),
        }
