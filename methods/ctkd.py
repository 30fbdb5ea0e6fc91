"""Curriculum temperature: KD whose temperature is learnt adversarially, behind a gradient-reversal layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.data import DatasetInfo
from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, valid
from kdbench.features import ModelInfo
from kdbench.losses import compared_logits, cross_entropy, kd_loss


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-strength``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    """Gradient reversal (Ganin & Lempitsky, 2015): ``x`` forward, ``-strength`` times the gradient backward."""
    return _ReverseGradient.apply(x, strength)


def cosine_curriculum(epoch: int, epochs: float, maximum: float = 1.0) -> float:
    """The reversal strength of the ``epoch``-th epoch (counted from 1), CTKD's cosine curriculum.

    ``maximum * (1 - cos(pi * min(epoch, epochs) / epochs)) / 2``: it rises from 0 to ``maximum`` over the first
    ``epochs`` epochs and stays there (CTKD's ``CosineDecay``).
    """
    if epochs <= 0:
        return maximum
    done = min(max(epoch, 0), epochs) / epochs
    return maximum * (1 - math.cos(math.pi * done)) / 2


@register_method("ctkd")
class CurriculumTemperatureKD(Distiller):
    """Curriculum Temperature for Knowledge Distillation (Li, Li, Yang, Zhao, Song, Luo, Li, Yang, AAAI 2023).

    Paper: https://arxiv.org/abs/2211.16231
    KD whose temperature is one learnable global parameter, T = min_temperature + temperature_range * sigmoid(t),
    trained with the student through a gradient-reversal layer, so it moves to *increase* the distillation loss;
    the reversal strength lambda follows a cosine curriculum from 0 to ``lambda_max`` over the first
    ``curriculum_epochs`` epochs (constant within an epoch, epochs counted from 1):
    loss = ce_weight * CE(z_s, y) + kd_weight * T² KL(softmax(z_t / T) || softmax(z_s / T)).
    Defaults are the authors' CIFAR-100 script (zhengli97/CTKD ``scripts/run_cifar_distill.sh``: ``-r 0.1 -a 0.9``,
    ``--have_mlp 1 --mlp_name global --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10``, with
    ``--t_start 1 --t_end 20`` and t initialised to 1 in ``train_student.py`` / ``models/temp_global.py``): T starts
    at 1 + 20 sigmoid(1) = 15.6 and stays in (1, 21). The authors optimise t with the student in one SGD group
    (same learning rate and weight decay), which is the default group here; it counts as ``extra_params_m``.
    With ``standardize`` both logits are z-scored before the temperature (logit standardisation, Sun et al., CVPR
    2024, whose CTKD experiments use CE 0.1 and KD weight 9).
    """

    family = "logit"

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of CTKD.

        Attributes:
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
            min_temperature: lower bound of the temperature (``--t_start``).
            temperature_range: width of the temperature's range above its lower bound (``--t_end``).
            init: initial value of the raw parameter t (before the sigmoid).
            curriculum_epochs: epochs over which lambda rises from 0 to ``lambda_max`` (``--decay_loops``).
            lambda_max: final strength of the gradient reversal (``-decay_min``).
            standardize: z-score the student's and the teacher's logits (per sample) before the temperature.
        """

        ce_weight: float = field(default=0.1, metadata=valid(ge=0))
        kd_weight: float = field(default=0.9, metadata=valid(ge=0))
        min_temperature: float = field(default=1.0, metadata=valid(gt=0))
        temperature_range: float = field(default=20.0, metadata=valid(gt=0))
        init: float = 1.0
        curriculum_epochs: float = field(default=10.0, metadata=valid(ge=0))
        lambda_max: float = field(default=1.0, metadata=valid(ge=0))
        standardize: bool = False

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.raw_temperature = nn.Parameter(torch.full((1,), float(params.init)))

    def reversal_strength(self, step: Step) -> float:
        """Lambda at this step: the cosine curriculum at the paper's 1-based epoch ``step.epoch + 1``."""
        return cosine_curriculum(step.epoch + 1, self.params.curriculum_epochs, self.params.lambda_max)

    def temperature(self, strength: float = 0.0) -> Tensor:
        """The current temperature (0-dim); the gradient to the raw parameter is reversed and scaled by ``strength``."""
        p = self.params
        raw = reverse_gradient(self.raw_temperature, strength).reshape(())
        return p.min_temperature + p.temperature_range * torch.sigmoid(raw)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and KD at the learnt temperature."""
        p = self.params
        student, teacher = compared_logits(step.student_logits, step.teacher_logits, p.standardize)
        temperature = self.temperature(self.reversal_strength(step))
        return {
            "loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
            "loss_kd": p.kd_weight * kd_loss(student, teacher, temperature),
        }
