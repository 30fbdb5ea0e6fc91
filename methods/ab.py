"""Activation boundaries: an initialisation that teaches the student where the teacher's neurons switch on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from kdbench.distiller import Distiller, RunContext, StageSelection, Step, register_method, valid
from kdbench.features import FeatureAdapter, ModelInfo

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def boundary_loss(student: Tensor, teacher: Tensor, margin: float = 1.0) -> Tensor:
    """Sum over all elements of ``(s + m)² [s > -m, t <= 0] + (s - m)² [s <= m, t > 0]`` (the alternative loss).

    ``student`` is the connector's output on the student's map, ``teacher`` the teacher's map of the same shape;
    only the sign of the teacher's values matters.
    """
    s, t = student.float(), teacher.float()
    return ((s + margin).pow(2) * ((s > -margin) & (t <= 0)) + (s - margin).pow(2) * ((s <= margin) & (t > 0))).sum()


def ab_loss(students: Sequence[Tensor], teachers: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """``3/1000 * sum_i 2^(i-n+1) * boundary_loss_i / B`` over n stages (shallow to deep; the deepest weighs 1).

    The scale and the stage weights of the authors' code and RepDistiller's ``ABLoss``: with ``feats_s_mapped``
    and ``feats_t_pre`` it equals the reference key ``ab_margin1_3stages``.
    """
    n, batch = len(students), students[0].shape[0]
    pairs = enumerate(zip(students, teachers, strict=True))
    total = sum(2.0 ** (i - n + 1) * boundary_loss(s, t, margin) for i, (s, t) in pairs)
    return total / batch * 3 / 1000


@register_method("ab")
class ActivationBoundaries(Distiller):
    """Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons (AAAI 2019).

    Byeongho Heo, Minsik Lee, Sangdoo Yun, Jin Young Choi. Paper: https://arxiv.org/abs/1811.03233
    Initialisation phase (``init_epochs``): connectors (1x1 conv + BN, pooling or interpolation where the sizes
    differ; none where the shapes agree) map each matched student stage onto the teacher stage's shape, and the
    student and the connectors minimise the hinge-like :func:`ab_loss` (margin 1), which pushes each connected
    student neuron to the teacher neuron's side of zero. Main phase: ce_weight * CE(z_s, y) + beta * AB loss.

    Protocol: the CRD benchmark's (RepDistiller ``--distill abound -a 0 -b 1 --init_epochs 30``), which follows
    the authors' code: every stage map but the stem, stage weights 1/4, 1/2, 1 from the deepest back, scale
    3/1000 per sample. Its main loop sets the AB term to 0 whatever ``-b`` says, and trains neither connectors nor
    anything but the student on CE: hence beta 0 (the connectors train only in the initialisation phase).
    RepDistiller uses pre-ReLU maps; kdbench gets the stage outputs timm returns. For a ReLU stage output the
    teacher's side of zero is the same before and after the ReLU, so the teacher target is unchanged; the
    connector reads the student's post-activation map.
    """

    family = "init_phase"
    version: ClassVar[int] = 1

    @dataclass(frozen=True)
    class Params(StageSelection):
        """Hyperparameters of activation-boundary distillation, after the stage selection (:class:`StageSelection`).

        Attributes:
            margin: the margin m of the alternative loss.
            beta: weight of the AB term in the main phase (0: RepDistiller's CE-only main phase).
            ce_weight: weight of the cross-entropy with the labels in the main phase.
            init_epochs: epochs of AB initialisation before the main phase (its own budget).
        """

        margin: float = field(default=1.0, metadata=valid(ge=0))
        beta: float = field(default=0.0, metadata=valid(ge=0))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        init_epochs: int = field(default=30, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.pairs = self.tap_stage_pairs(student, teacher)
        self.init_epochs = params.init_epochs
        shapes = [(student.stages[i], teacher.stages[j]) for i, j in self.pairs]
        self.connectors = nn.ModuleList(FeatureAdapter(a, b, project=(a.channels, a.height, a.width) !=
                                                       (b.channels, b.height, b.width)) for a, b in shapes)

    def param_groups(self) -> list[dict]:
        """The connectors train in the main phase only when the AB term is part of it (``beta > 0``)."""
        return super().param_groups() if self.params.beta > 0 else []

    def _ab(self, step: Step) -> Tensor:
        connected = [c(step.student_features[s]) for c, (s, _) in zip(self.connectors, self.pairs, strict=True)]
        return ab_loss(connected, [step.teacher_features[t] for _, t in self.pairs], self.params.margin)

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """The AB loss alone (student and connectors train)."""
        return {"loss_ab": self._ab(step)}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, and the AB term when ``beta > 0``."""
        p = self.params
        return self.with_ce(step, loss_ab=p.beta * self._ab(step)) if p.beta > 0 else self.with_ce(step)
