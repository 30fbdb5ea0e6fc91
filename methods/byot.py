"""Self-distillation through auxiliary classifiers on the student's own intermediate stages (BYOT)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import DatasetInfo
from kdbench.distiller import Distiller, MethodParams, Step, TeacherParts, register_method, tunable, valid
from kdbench.errors import ModelError
from kdbench.features import ModelInfo, StageShape, forward_with_features
from kdbench.losses import soft_kl


def squared_distance(feature: Tensor, target: Tensor) -> Tensor:
    """``||f - t||²`` per sample (summed over the feature dimensions), averaged over the batch."""
    return (feature.float() - target.float()).pow(2).flatten(1).sum(1).mean()


def exit_head(stage: StageShape, deepest: StageShape, num_classes: int) -> nn.ModuleDict:
    """A shallow exit: a bottleneck to the deepest stage's shape, then global pooling and a linear classifier.

    Bottleneck: 1x1 conv to ``deepest.channels // 4`` channels, average pooling to the deepest stage's spatial
    size, 3x3 conv, 1x1 conv to ``deepest.channels``; each conv followed by BatchNorm and ReLU. Its pooled output
    has the shape of the deepest stage's pooled feature, so the hint needs no further adapter.
    """
    width = max(1, deepest.channels // 4)
    bottleneck = nn.Sequential(
        nn.Conv2d(stage.channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((deepest.height, deepest.width)),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, deepest.channels, 1, bias=False), nn.BatchNorm2d(deepest.channels), nn.ReLU(inplace=True),
    )
    return nn.ModuleDict({"bottleneck": bottleneck, "classifier": nn.Linear(deepest.channels, num_classes)})


@register_method("byot")
class BeYourOwnTeacher(Distiller):
    """Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via Self Distillation.

    Zhang, Song, Gao, Chen, Bao, Ma, ICCV 2019. Paper: https://arxiv.org/abs/1905.08094
    Shallow exits (bottleneck, pooling, linear) sit on the student's deepest ``exits`` intermediate stages; the
    deepest exit is the student's own classifier. With q_i = softmax(z_i / T) and F_i the pooled bottleneck
    feature of exit i (F_C: the pooled last-stage feature), the loss is
    CE(z_C, y) + sum_i [(1 - alpha) CE(z_i, y) + alpha KL(q_C || q_i) + lambda ||F_i - F_C||²],
    with z_C and F_C detached, alpha = lambda = 0 on the deepest exit, and the hint a squared L2 distance per
    sample averaged over the batch, as written in the paper. Defaults alpha = 0.3,
    lambda = 0.03, T = 3 and the KL without a T² factor are the authors' code
    (github.com/ArchipLab-LinfengZhang/pytorch-self-distillation-final). The heads count as ``extra_params_m``;
    the record's ``exit_top1`` holds the test top-1 of every deployed variant: each exit (``stage<i>``: the student
    up to its stage and the exit's head), ``final`` and ``ensemble`` (the mean of all exits' logits).
    """

    family = "self"
    needs_teacher = False

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of BYOT.

        Attributes:
            exits: shallow exits, on the deepest intermediate stages (fewer when the model has fewer).
            alpha: share of the distillation term in each shallow exit's loss (1 - alpha goes to its CE).
            hint_weight: lambda, weight of the feature hint from the deepest feature to each shallow exit.
            temperature: softening T of the deepest and the shallow distributions.
        """

        exits: int = field(default=3, metadata=valid(ge=1))
        alpha: float = field(default=0.3, metadata=valid(ge=0, le=1) | tunable(0.1, 0.9))
        hint_weight: float = field(default=0.03, metadata=valid(ge=0) | tunable(0.003, 0.3, log=True))
        temperature: float = field(default=3.0, metadata=valid(gt=0) | tunable(1.0, 8.0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo) -> None:
        super().__init__(params, student, teacher, data)
        student.require_features(self.name)
        last = len(student.stages) - 1
        if last < 1:
            raise ModelError(f"model {student.name!r} has one feature stage; byot needs at least two")
        self.exit_stages = tuple(range(max(0, last - params.exits), last))
        self.last_stage = last
        self.heads = nn.ModuleList(exit_head(student.stages[i], student.stages[last], data.num_classes)
                                   for i in self.exit_stages)
        self.student_stages = (*self.exit_stages, last)

    def exit_outputs(self, features: dict[int, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``(pooled bottleneck feature, logits)`` of each shallow exit, shallowest first."""
        outputs = []
        for stage, head in zip(self.exit_stages, self.heads, strict=True):
            pooled = head["bottleneck"](features[stage]).mean(dim=(2, 3))
            outputs.append((pooled, head["classifier"](pooled)))
        return outputs

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Deepest CE, and the summed CE, KD and hint terms of the shallow exits."""
        p = self.params
        deepest_logits = step.student_logits.detach()
        deepest_feature = step.student_features[self.last_stage].detach().mean(dim=(2, 3))
        exits = self.exit_outputs(step.student_features)
        return {
            "loss_ce": F.cross_entropy(step.student_logits, step.labels),
            "loss_exit_ce": (1 - p.alpha) * sum(F.cross_entropy(z, step.labels) for _, z in exits),
            "loss_exit_kd": p.alpha * sum(soft_kl(z, deepest_logits, p.temperature) for _, z in exits),
            "loss_exit_hint": p.hint_weight * sum(squared_distance(f, deepest_feature) for f, _ in exits),
        }

    def deployed_variants(self, student: nn.Module, teacher: TeacherParts) -> dict[str, nn.Module]:
        """Every shallow exit (its stages of the student, its head), the final classifier, and their mean."""
        exits = {f"stage{s}": ExitNetwork(student, self, s) for s in self.exit_stages}
        return {**exits, "final": student, "ensemble": ExitNetwork(student, self, None)}


class ExitNetwork(nn.Module):
    """A shallow exit of a BYOT student (the student's map at its stage, then the exit's head).

    With ``stage=None`` the ensemble: the mean of every exit's logits and the final classifier's, from one pass.
    """

    def __init__(self, student: nn.Module, method: BeYourOwnTeacher, stage: int | None) -> None:
        super().__init__()
        self.student, self.method, self.stage = student, method, stage

    def forward(self, images: Tensor) -> Tensor:
        """The exit's logits."""
        if self.stage is not None:
            _, features = forward_with_features(self.student, images, (self.stage,))
            head = self.method.heads[self.method.exit_stages.index(self.stage)]
            return head["classifier"](head["bottleneck"](features[self.stage]).mean(dim=(2, 3)))
        logits, features = forward_with_features(self.student, images, self.method.student_stages)
        return torch.stack([*(z for _, z in self.method.exit_outputs(features)), logits]).mean(0)
