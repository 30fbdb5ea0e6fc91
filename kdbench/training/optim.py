"""The optimiser and the learning-rate schedule of a run, and the backward passes of a method's gradient groups."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kdbench import distributed
from kdbench.config import RunSpec
from kdbench.errors import ConfigError

if TYPE_CHECKING:
    from kdbench.distiller import Distiller


def make_optimizer(spec: RunSpec, groups: list[dict[str, Any]], method: Distiller | None = None
                   ) -> torch.optim.Optimizer:
    """The run's optimiser over parameter groups: SGD with momentum (the default) or AdamW.

    A group may carry ``lr_scale`` (a multiplier of the scheduled learning rate) and ``weight_decay``. For a
    ``method`` that declares ``gradient_groups``, the optimiser its ``make_optimizer`` returns, over the same
    groups, with the run's settings.

    Raises:
        ConfigError: a group has a key other than ``params``, ``lr_scale`` and ``weight_decay``.
        RuntimeError: the method's gradient groups or its optimiser break the contract (one line; the run fails).
    """
    for group in groups:
        unknown = set(group) - {"params", "lr_scale", "weight_decay"}
        if unknown:
            raise ConfigError(f"a parameter group may set params, lr_scale and weight_decay (got {sorted(unknown)})")
        group.setdefault("lr_scale", 1.0)
    groups = [g for g in groups if list(g["params"])]
    if method is not None and getattr(method, "gradient_groups", None):
        check_gradient_groups(method.gradient_groups, method.name)
        optimizer = method.make_optimizer(groups, kind=spec.optimizer, lr=spec.lr, momentum=spec.momentum,
                                          weight_decay=spec.weight_decay, betas=tuple(spec.betas))
        if not callable(getattr(optimizer, "step_groups", None)):
            raise RuntimeError(f"method {method.name!r}: make_optimizer() must return an optimiser with "
                               f"step_groups(grads) (got {type(optimizer).__name__})")
        return optimizer
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


def check_gradient_groups(groups: Any, method: str) -> None:
    """Check a method's ``gradient_groups``: group name -> a non-empty tuple of term names, no term twice.

    Raises:
        RuntimeError: one line naming the method and what is wrong.
    """
    contract = f"method {method!r}: gradient_groups must map group names to tuples of loss term names"
    if not isinstance(groups, Mapping) or not groups:
        raise RuntimeError(f"{contract} (got {groups!r})")
    seen: set[str] = set()
    for name, terms in groups.items():
        if not isinstance(name, str) or not isinstance(terms, tuple | list) or not terms or not all(
                isinstance(t, str) for t in terms):
            raise RuntimeError(f"{contract}; group {name!r} is {terms!r}")
        twice = seen & set(terms)
        if twice or len(set(terms)) != len(terms):
            raise RuntimeError(f"{contract}, each term in one group; {sorted(twice) or list(terms)} repeats")
        seen |= set(terms)


def backward_groups(optimizer: torch.optim.Optimizer, terms: Mapping[str, Tensor],
                    groups: Mapping[str, Sequence[str]], method: str, weight: float = 1.0
                    ) -> dict[str, list[Tensor | None]]:
    """One backward pass per gradient group: group name -> the gradient of its terms' sum for each parameter.

    The parameters are the optimiser's, in the order of its ``param_groups``; ``None`` where the group does not
    reach one. Each group's loss is multiplied by ``weight`` (a process's share, see
    :func:`kdbench.distributed.share_weight`) and its gradients are averaged over the processes under torchrun,
    as the single backward pass's are; the graph is kept until the last group. The parameters' ``.grad`` are
    left empty.

    Raises:
        RuntimeError: the terms are not those the groups name (one line; the run fails).
    """
    named = {t for names in groups.values() for t in names}
    if named != set(terms):
        missing, loose = sorted(named - set(terms)), sorted(set(terms) - named)
        raise RuntimeError(f"method {method!r}: losses() must return exactly the terms of its gradient_groups "
                           f"(missing {missing}, in no group {loose})")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads: dict[str, list[Tensor | None]] = {}
    last = len(groups) - 1
    for i, (name, names) in enumerate(groups.items()):
        loss = torch.stack([terms[t].float() for t in names]).sum()
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            (loss * weight if weight != 1.0 else loss).backward(retain_graph=i < last)
        distributed.average_gradients(optimizer)
        grads[name] = [p.grad for p in params]
    optimizer.zero_grad(set_to_none=True)
    return grads
