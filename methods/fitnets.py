"""FitNets: a hint from a middle stage of the teacher, matched by a regressor on the student's stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import FeatureAdapter, ModelInfo, select_stage
from kdbench.losses import cross_entropy, kd_loss

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def hint_loss(adapted_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error over all elements between the regressed student map and the teacher's map."""
    return F.mse_loss(adapted_student.float(), teacher_feature.float())


@register_method("fitnets")
class FitNets(Distiller):
    """FitNets: Hints for Thin Deep Nets (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015).

    Paper: https://arxiv.org/abs/1412.6550
    A regressor r (1x1 conv + BN, and pooling or bilinear interpolation when the strides differ; see
    :class:`kdbench.features.FeatureAdapter`), followed by a ReLU as in the CRD code's and mdistiller's ``ConvReg``
    (the hint stage's map is a post-activation one), maps the student's guided stage onto the teacher's hint
    stage: hint = mean over elements of (ReLU(r(F_s)) - F_t)². The regressor trains with the student, counts as
    ``extra_params_m`` and is dropped from the deployed student.

    Single-stage (``hint_epochs = 0``, the default), as in the CRD benchmark (Tian et al., 2020, whose code uses
    an MSE "hint" loss on feature index 2, the middle stage, with weights CE 1 and hint 100):
    loss = ce_weight * CE(z_s, y) + hint_weight * hint.
    Two-stage (``hint_epochs > 0``), as in the paper: an initialisation phase of ``hint_epochs`` epochs trains
    the student and the regressor on the hint term alone (stage 1: the student up to the guided stage; later
    layers get no gradient from it), at the run's constant learning rate; then the main training, with its full
    budget, uses kd_ce_weight * CE + kd_weight * T² KL(p_t || p_s) at temperature T. The paper's stage 2 is KD
    with an annealed soft-target weight; kdbench uses the fixed weights and temperature of its ``kd`` method
    (CRD protocol: T = 4, CE 0.1, KD 0.9), so that two-stage FitNets differs from ``kd`` only by the hint phase.

    Version 2: the hint epochs are an initialisation phase before the full budget (version 1 took them out of it).
    Version 3: the regressor ends with a ReLU, as the authors' does (version 2 had none).
    """

    family = "feature"
    version = 3

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of FitNets.

        Attributes:
            hint_depth: relative depth in [0, 1] of the hint stage in both models (0.5: the middle stage).
            student_stage: explicit index of the student's guided stage (negative: from the end); wins over depth.
            teacher_stage: explicit index of the teacher's hint stage (negative: from the end); wins over depth.
            hint_weight: weight of the hint term.
            ce_weight: weight of the cross-entropy with the labels (single-stage).
            hint_epochs: epochs of the hint-only initialisation phase before KD (0: the single-stage CRD
                protocol).
            temperature: KD temperature after the hint epochs (two-stage only).
            kd_ce_weight: cross-entropy weight after the hint epochs (two-stage only).
            kd_weight: soft-target weight after the hint epochs (two-stage only).
        """

        hint_depth: float = field(default=0.5, metadata=valid(ge=0, le=1))
        student_stage: int | None = None
        teacher_stage: int | None = None
        hint_weight: float = field(default=100.0, metadata=valid(ge=0) | tunable(10.0, 1000.0, log=True))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        hint_epochs: int = field(default=0, metadata=valid(ge=0))
        temperature: float = field(default=4.0, metadata=valid(gt=0))
        kd_ce_weight: float = field(default=0.1, metadata=valid(ge=0))
        kd_weight: float = field(default=0.9, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.init_epochs = params.hint_epochs
        student.require_features(self.name)
        teacher.require_features(self.name)
        s = select_stage(student, params.hint_depth, params.student_stage, what=f"{self.name}.student_stage")
        t = select_stage(teacher, params.hint_depth, params.teacher_stage, what=f"{self.name}.teacher_stage")
        self.student_stages, self.teacher_stages = (s,), (t,)
        self.regressor = FeatureAdapter(student.stages[s], teacher.stages[t], project=True)

    def _hint(self, step: Step) -> Tensor:
        (s,), (t,) = self.student_stages, self.teacher_stages
        adapted = F.relu(self.regressor(step.student_features[s]))
        return self.params.hint_weight * hint_loss(adapted, step.teacher_features[t])

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """Stage 1 of the two-stage schedule: the hint term alone."""
        return {"loss_hint": self._hint(step)}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Hint + CE terms (single-stage), or the KD terms after the hint phase (two-stage)."""
        p = self.params
        if p.hint_epochs:
            return {
                "loss_ce": p.kd_ce_weight * cross_entropy(step.student_logits, step.labels),
                "loss_kd": p.kd_weight * kd_loss(step.student_logits, step.teacher_logits, p.temperature),
            }
        return {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels), "loss_hint": self._hint(step)}
