"""DeiT's distillation token: its head learns from the teacher while the class token's learns from the labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.errors import ModelError
from kdbench.features import ModelInfo
from kdbench.losses import cross_entropy, soft_kl

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def deit_distillation_loss(distillation_logits: Tensor, teacher_logits: Tensor, distillation_type: str = "hard",
                           tau: float = 1.0) -> Tensor:
    """The distillation-token term of DeiT's ``DistillationLoss``.

    ``"hard"``: CE(z_dist, argmax_c z_t), averaged over the batch. ``"soft"``: tau² · KL(softmax(z_t / tau) ||
    softmax(z_dist / tau)) summed over all elements and divided by their number B·C (the code's
    ``/ outputs_kd.numel()``), i.e. the batch-mean KL divided by the number of classes.
    """
    if distillation_type == "hard":
        return F.cross_entropy(distillation_logits.float(), teacher_logits.argmax(dim=1))
    return soft_kl(distillation_logits, teacher_logits, tau) * tau**2 / distillation_logits.shape[1]


@register_method("deit")
class DeiT(Distiller):
    """Training data-efficient image transformers & distillation through attention (ICML 2021).

    Touvron, Cord, Douze, Massa, Sablayrolles, Jégou. Paper: https://arxiv.org/abs/2012.12877
    Code: https://github.com/facebookresearch/deit (``losses.py``)
    The student carries a distillation token next to its class token, each with its own head (timm's distilled
    DeiT models, ``VisionTransformerDistilled``): loss = (1 - alpha) * CE(z_cls, y) + alpha * D(z_dist, z_t),
    with D the hard-label CE to the teacher's argmax (the paper's best; the default here, where the code's
    ``main.py`` defaults to no distillation) or the soft tau² KL of :func:`deit_distillation_loss`; alpha 0.5 and
    tau 1 are the code's defaults. As the code does, the soft term is divided by B·C elements rather than by
    the batch size, so it is C times smaller than the usual batch-mean KD term. The deployed student is the
    model in eval mode, whose logits are the mean of the two heads, as in the paper. The code's base criterion
    uses label smoothing or mixup soft targets (its ImageNet recipe); here the protocol's CE on hard labels.
    """

    family = "architecture"
    version = 1

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of DeiT distillation.

        Attributes:
            distillation_type: ``"hard"`` (teacher's argmax as the label) or ``"soft"`` (tau² KL over B·C).
            alpha: weight of the distillation term; the class token's CE gets 1 - alpha.
            tau: temperature of the soft term.
        """

        distillation_type: str = field(default="hard", metadata=tunable(choices=("hard", "soft")))
        alpha: float = field(default=0.5, metadata=valid(ge=0, le=1))
        tau: float = field(default=1.0, metadata=valid(gt=0))

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.distillation_type not in ("hard", "soft"):
                raise ValueError(f"distillation_type must be 'hard' or 'soft' (got {self.distillation_type!r})")

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.student_name = student.name

    def training_student(self, student: nn.Module) -> nn.Module:
        """The student with its distillation head's training output on; one without is a one-line ModelError.

        The deployed network stays the student itself: in eval mode its logits are the mean of the two heads.
        """
        if not callable(getattr(student, "set_distilled_training", None)):
            raise ModelError(f"method 'deit' needs a student with a distillation token (a distilled DeiT such as "
                             f"deit_tiny_distilled_patch16_224); {self.student_name!r} has none")
        student.set_distilled_training(True)
        return student

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted class-token CE and distillation-token terms."""
        p = self.params
        if len(step.student_heads) < 2:
            raise ModelError(f"method 'deit' needs the class-token and distillation-token outputs of the student; "
                             f"{self.student_name!r} returned {len(step.student_heads)} head(s)")
        cls_logits, dist_logits = step.student_heads[:2]
        return {"loss_ce": (1 - p.alpha) * cross_entropy(cls_logits, step.labels),
                "loss_kd": p.alpha * deit_distillation_loss(dist_logits, step.teacher_logits, p.distillation_type,
                                                            p.tau)}
