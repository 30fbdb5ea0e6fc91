"""The plain cross-entropy student: the no-distillation baseline every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, MethodParams, Step, register_method, valid


@register_method("ce")
class CrossEntropy(Distiller):
    """Cross-entropy on the labels only, no teacher: the baseline of every KD table ("student" row).

    Every distillation method is ranked by its gain over this run under the same budget and seed.
    """

    family = "baseline"
    needs_teacher = False

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of the baseline.

        Attributes:
            label_smoothing: label smoothing of the cross-entropy (0 in the KD literature's baseline).
        """

        label_smoothing: float = field(default=0.0, metadata=valid(ge=0, le=1))

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Cross-entropy of the student's logits."""
        return {"loss_ce": F.cross_entropy(step.student_logits, step.labels,
                                           label_smoothing=self.params.label_smoothing)}
