"""One-for-all KD: student stages projected to logits by branches, each distilled with target-enhanced soft labels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from kdbench.distiller import Distiller, MethodParams, RunContext, Step, register_method, tunable, valid
from kdbench.features import ModelInfo, StageShape, relative_depth, select_stages
from kdbench.losses import cross_entropy

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo


def ofa_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float,
             temperature: float = 1.0) -> Tensor:
    """mean_b sum_c -((p_t + y)^eps - y) log p_s, ``p = softmax(z / T)``, ``y`` the one-hot label (eps 1: CE to p_t)."""
    onehot = F.one_hot(labels, student_logits.shape[1]).float()
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    target = (F.softmax(teacher_logits.float() / temperature, dim=1) + onehot).pow(eps) - onehot
    return -(target * log_p_s).sum(dim=1).mean()


def _sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """The authors' SepConv: depthwise 3x3 stride 2 + 1x1 + BN + ReLU, depthwise 3x3 + 1x1 + BN + ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
                         nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _TokenBranch(nn.Module):
    """Isotropic students: 2x2 patch merges (LayerNorm + linear) towards a 7x7 grid, transformer blocks, mean token."""

    def __init__(self, stage: StageShape, dim: int, blocks: int, num_classes: int) -> None:
        super().__init__()
        merges = max(int(math.log2(stage.height / 7)), 0)
        widths = [stage.channels] + [dim] * merges
        self.merges = nn.ModuleList(nn.Sequential(nn.LayerNorm(4 * c), nn.Linear(4 * c, dim, bias=False),
                                                  nn.Identity() if 0 < i == merges - 1 else nn.GELU())
                                    for i, c in enumerate(widths[:-1]))
        self.proj = nn.Linear(stage.channels, dim) if not merges and stage.channels != dim else nn.Identity()
        self.blocks = nn.Sequential(*(Block(dim, math.gcd(4, dim)) for _ in range(blocks)))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits from an NCHW stage map."""
        x = x.permute(0, 2, 3, 1)
        for merge in self.merges:
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
            x = merge(torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1))
        return self.head(self.blocks(self.proj(x.flatten(1, 2))).mean(1))


def _conv_branch(stage: StageShape, dim: int, downsamples: int, num_classes: int) -> nn.Sequential:
    """Hierarchical students: ``downsamples`` SepConvs doubling the width (the last to ``dim``), or a 1x1 conv."""
    widths = [stage.channels * 2**i for i in range(downsamples)] + [dim]
    body = ([_sep_conv(a, b) for a, b in zip(widths, widths[1:], strict=False)] if downsamples
            else [nn.Conv2d(stage.channels, dim, 1)])
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, num_classes))


def _init(module: nn.Module) -> None:
    """The authors' initialisation: Kaiming (fan out) convs, truncated-normal (0.02) linears with zero bias."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_method("ofa")
class OFA(Distiller):
    """One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation (NeurIPS 2023).

    Hao, Guo, Han, Tang, Hu, Wang, Xu. Paper: https://arxiv.org/abs/2310.19444
    Code: https://github.com/Hao840/OFAKD (``distillers/ofa.py``).
    Branches project student stages into the logit space, where any teacher (CNN, ViT, MLP) can teach them:
    loss = ce_weight * CE(z_s, y) + kd_weight * L(z_s) + ofa_weight * sum over branches b of L(b(F_s^b)), with
    L(z) = mean_b sum_c -((p_t + y)^eps - y) log softmax(z / T)_c against the teacher's final logits (eps > 1
    enhances the target class more where the teacher is unsure). Defaults: the code's (eps 1, T 1, all weights 1;
    its README's ImageNet example uses eps 1.5). The branches train with the student, count in
    ``extra_params_m`` and are dropped from the deployed student.

    Stages: the authors' four-stage layout, at relative depths 0.25, 0.5, 0.75 and 1 of the student (ResNet
    layers 1-4; blocks 4, 7, 9 and 12 of a 12-block ViT, where the code taps blocks 2, 4, 10 and 12), distinct
    stages only. A branch at depth d has k = round(4 (1 - d)) levels (the code's 4 - stage). Hierarchical
    students (stage maps of different shapes) get the code's CNN branch: k SepConvs, each halving the map and
    doubling the width (the last to max(student, teacher) pre-logits width), or a 1x1 conv at the last stage;
    then global pooling and a linear classifier. Isotropic students (ViT, MLP-Mixer: every stage map alike) get
    its token branch: 2x2 patch merges towards a 7x7 grid, max(k, 1) transformer blocks (4 heads), a classifier
    on the mean token; kdbench's stage maps carry no class token, so the mean token replaces the code's class
    token (which it keeps for ViTs). The code's CE uses label smoothing 0.1 (its configs); here the protocol's CE.
    """

    family = "architecture"
    version = 1

    @dataclass(frozen=True)
    class Params(MethodParams):
        """Hyperparameters of OFA.

        Attributes:
            eps: the target-enhancement exponent (1: plain cross-entropy with the teacher's probabilities).
            temperature: softening T of both distributions.
            depths: relative depths in [0, 1] of the student stages that get a branch.
            student_indices: explicit student stage indices (negative: from the end); win over ``depths``.
            ce_weight: weight of the cross-entropy with the labels (the code's ``gt_loss_weight``).
            kd_weight: weight of the OFA loss on the student's own logits.
            ofa_weight: weight of the branches' OFA losses (summed over branches).
        """

        eps: float = field(default=1.0, metadata=valid(gt=0) | tunable(1.0, 2.0))
        temperature: float = field(default=1.0, metadata=valid(gt=0))
        depths: tuple[float, ...] = field(default=(0.25, 0.5, 0.75, 1.0), metadata=valid(ge=0, le=1))
        student_indices: tuple[int, ...] | None = None
        ce_weight: float = field(default=1.0, metadata=valid(ge=0))
        kd_weight: float = field(default=1.0, metadata=valid(ge=0))
        ofa_weight: float = field(default=1.0, metadata=valid(ge=0))

    def __init__(self, params: Params, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        student.require_features(self.name)
        stages = tuple(dict.fromkeys(select_stages(student, params.depths, params.student_indices,
                                                   what=f"{self.name}.student_indices")))
        self.student_stages = tuple(sorted(stages))
        dim = max(student.num_features, teacher.num_features)
        isotropic = len({(s.channels, s.height, s.width) for s in student.stages}) == 1
        self.branches = nn.ModuleDict()
        for s in stages:
            levels = round(4 * (1 - relative_depth(s, student.num_stages)))
            shape = student.stages[s]
            self.branches[str(s)] = (_TokenBranch(shape, student.num_features, max(levels, 1), data.num_classes)
                                     if isotropic else _conv_branch(shape, dim, levels, data.num_classes))
        self.branches.apply(_init)

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Weighted cross-entropy, final-logit OFA and branch OFA terms."""
        p, t = self.params, step.teacher_logits
        branch = sum(ofa_loss(head(step.student_features[int(s)]), t, step.labels, p.eps, p.temperature)
                     for s, head in self.branches.items())
        return {"loss_ce": p.ce_weight * cross_entropy(step.student_logits, step.labels),
                "loss_kd": p.kd_weight * ofa_loss(step.student_logits, t, step.labels, p.eps, p.temperature),
                "loss_ofa": p.ofa_weight * branch}
