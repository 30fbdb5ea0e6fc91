"""Factor transfer: a paraphraser trained on the teacher's last stage, a translator on the student's, L1 on factors."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, valid
from kdbench.features import ModelInfo, pool_to_common_size, select_stage
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo

FACTORS = ("auto", "attention", "flatten")


def factor_vector(factor: Tensor, kind: str = "attention") -> Tensor:
    """A factor as a unit vector per sample: of ``mean_c factor²`` ("attention") or of the flattened factor."""
    factor = factor.float()
    return F.normalize(factor.pow(2).mean(1).flatten(1) if kind == "attention" else factor.flatten(1), dim=1)


def factor_loss(student_factor: Tensor, teacher_factor: Tensor, kind: str = "attention") -> Tensor:
    """Mean over batch and entries of ``|u_s - u_t|`` (p = 1), the larger factor map first pooled to the smaller's size.

    ``kind="attention"`` is RepDistiller's ``FactorTransfer(p1=2, p2=1)`` (reference key
    ``ft_factor_repdistiller_p1_2_p2_1``); ``kind="flatten"`` normalises the flattened factor as the paper writes
    it (key ``ft_factor_p1``: AberHu's and torchdistill's code).
    """
    student_factor, teacher_factor = pool_to_common_size(student_factor, teacher_factor)
    return (factor_vector(student_factor, kind) - factor_vector(teacher_factor, kind)).abs().mean()


def conv_stack(widths: list[int], *, transpose: bool = False, batch_norm: bool = False) -> nn.Sequential:
    """3x3 stride-1 (transposed) convolutions between consecutive widths, each followed by [BN and] LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(widths):
        layers += [conv(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


@register_method("ft")
class FactorTransfer(Distiller):
    """Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim, Park, Kwak, NeurIPS 2018).

    Paper: https://arxiv.org/abs/1802.04977
    Initialisation phase (``init_epochs``): a paraphraser (encoder of three 3x3 convolutions to ``rate`` x the
    teacher's channels, decoder of three transposed ones back, LeakyReLU 0.1, no BN) learns to reconstruct the
    teacher's last stage map, loss = mean (decoder(encoder(F_t)) - F_t)²; only its parameters train.
    Main phase: a translator (three 3x3 convolutions with BN from the student's last stage to the factor width)
    trains with the student; the frozen paraphraser's encoder gives the teacher factor:
    loss = ce_weight * CE(z_s, y) + beta * mean |u(T(F_s)) - u(P(F_t))|.

    Protocol: the CRD benchmark's (RepDistiller ``--distill factor -a 0 -b 200 --init_epochs 30``: rate 0.5, CE 1,
    beta 200, the last stage map of each model). Its factor vector u is the L2-normalised ``mean_c factor²``
    (``factor="attention"``), which its beta assumes; ``"flatten"`` is the paper's normalised flattened factor.
    The default ``"auto"`` is "attention" unless the (pooled) factor maps are 1x1, where that vector is the
    constant 1 and the term vanishes (small inputs): there it is "flatten". The paraphraser trains at
    ``init_lr`` = 0.01, as RepDistiller's ``helper/pretrain.py`` does for its ResNet/WRN students (and, through
    their run's lr of 0.01, its MobileNet/ShuffleNet ones; only its VGG students get the run's 0.05), with the
    run's momentum and weight decay; ``init_lr=None`` uses the run's lr.

    Version 2: the paraphraser phase runs at ``init_lr`` (version 1: at the run's lr).
    """

    family = "init_phase"
    version: ClassVar[int] = 2

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of factor transfer.

        Attributes:
            beta: weight of the factor term.
            ce_weight: weight of the cross-entropy with the labels.
            rate: paraphrase rate k: factor channels = int(k x the teacher stage's channels).
            factor: "attention" (RepDistiller's factor vector), "flatten" (the paper's), or "auto" ("attention"
                unless the factor maps are 1x1, then "flatten").
            init_epochs: epochs of paraphraser training before the main phase (its own budget).
            init_lr: the paraphraser phase's constant learning rate (``None``: the run's lr).
            depth: relative depth in [0, 1] of the stage used in both models (1: the last).
            student_stage: explicit student stage index (negative: from the end); wins over ``depth``.
            teacher_stage: explicit teacher stage index (negative: from the end); wins over ``depth``.
        """

        beta: float = field(default=200.0, metadata=valid(ge=0))
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        rate: float = field(default=0.5, metadata=valid(gt=0))
        factor: str = "auto"
        init_epochs: int = field(default=30, metadata=valid(ge=0))
        init_lr: float | None = field(default=0.01, metadata=valid(gt=0))
        depth: float = field(default=1.0, metadata=valid(ge=0, le=1))
        student_stage: int | None = None
        teacher_stage: int | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.factor not in FACTORS:
                raise ValueError(f"factor must be one of {', '.join(FACTORS)} (got {self.factor!r})")

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        student.require_features(self.name)
        teacher.require_features(self.name)
        s = select_stage(student, params.depth, params.student_stage, what=f"{self.name}.student_stage")
        t = select_stage(teacher, params.depth, params.teacher_stage, what=f"{self.name}.teacher_stage")
        self.student_stages, self.teacher_stages = (s,), (t,)
        self.init_epochs, self.init_lr = params.init_epochs, params.init_lr
        self.init_trains = "method"  # the paraphraser: the only modules its reconstruction loss reaches
        c_s, c_t = student.stages[s].channels, teacher.stages[t].channels
        c_f = max(1, int(c_t * params.rate))
        one_by_one = min(student.stages[s].height, teacher.stages[t].height) == 1 == min(
            student.stages[s].width, teacher.stages[t].width)
        self.factor = ("flatten" if one_by_one else "attention") if params.factor == "auto" else params.factor
        self.encoder = conv_stack([c_t, c_t, c_f, c_f])
        self.decoder = conv_stack([c_f, c_f, c_t, c_t], transpose=True)
        self.translator = conv_stack([c_s, c_s, c_f, c_f], batch_norm=True)

    def param_groups(self) -> list[dict]:
        """Only the translator trains in the main phase (the paraphraser stays as the initialisation left it)."""
        return [{"params": list(self.translator.parameters())}]

    def init_losses(self, step: Step) -> dict[str, Tensor]:
        """The paraphraser's reconstruction error on the teacher's map."""
        f_t = step.teacher_features[self.teacher_stages[0]].float()
        return {"loss_rec": F.mse_loss(self.decoder(self.encoder(f_t)).float(), f_t)}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy and factor terms."""
        p = self.params
        with torch.no_grad():
            factor_t = self.encoder(step.teacher_features[self.teacher_stages[0]].float())
        factor_s = self.translator(step.student_features[self.student_stages[0]])
        return {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
                "loss_ft": p.beta * factor_loss(factor_s, factor_t, self.factor)}
