"""The optimiser and the learning-rate schedule of a run."""

from __future__ import annotations

import math
from typing import Any

import torch

from kdbench.config import RunSpec
from kdbench.errors import ConfigError


def make_optimizer(spec: RunSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The run's optimiser over parameter groups: SGD with momentum (the default) or AdamW.

    A group may carry ``lr_scale`` (a multiplier of the scheduled learning rate) and ``weight_decay``.

    Raises:
        ConfigError: a group has a key other than ``params``, ``lr_scale`` and ``weight_decay``.
    """
    for group in groups:
        unknown = set(group) - {"params", "lr_scale", "weight_decay"}
        if unknown:
            raise ConfigError(f"a parameter group may set params, lr_scale and weight_decay (got {sorted(unknown)})")
        group.setdefault("lr_scale", 1.0)
    groups = [g for g in groups if list(g["params"])]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def learning_rate(spec: RunSpec, epoch_progress: float) -> float:
    """Learning rate at fractional epoch ``epoch_progress`` (0 = start of training).

    Linear warm-up over ``warmup_epochs``, then ``cosine`` (per step, from ``lr`` to 0 over the remaining epochs)
    or ``multistep`` (``lr`` times ``lr_decay`` for each milestone epoch reached, changing at epoch boundaries).
    """
    if spec.warmup_epochs and epoch_progress < spec.warmup_epochs:
        return spec.lr * (epoch_progress + 1e-8) / spec.warmup_epochs
    if spec.schedule == "multistep":
        reached = sum(1 for m in spec.milestones if math.floor(epoch_progress) >= m)
        return spec.lr * spec.lr_decay**reached
    span = max(1e-8, spec.epochs - spec.warmup_epochs)
    t = min(1.0, (epoch_progress - spec.warmup_epochs) / span)
    return 0.5 * spec.lr * (1.0 + math.cos(math.pi * t))
