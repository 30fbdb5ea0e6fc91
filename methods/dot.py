"""DOT: KD trained by an SGD that keeps separate momentum buffers for the task and the distillation gradients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdbench.data import DatasetInfo
from kdbench.distiller import RunContext, register_method, tunable, valid
from kdbench.errors import ConfigError
from kdbench.features import ModelInfo
from kdbench.methods.kd import LogitKD


@torch.no_grad()
def dot_update(params: Sequence[Tensor], task_grads: Sequence[Tensor | None], kd_grads: Sequence[Tensor | None],
               task_buffers: list[Tensor | None], kd_buffers: list[Tensor | None], *, lr: float, momentum: float,
               delta: float, weight_decay: float) -> None:
    """One DOT step in place: the task (CE) update, then the distillation update, as mdistiller's trainer does.

    Task: d = g + wd·p; the buffer starts at d, then becomes (m - delta)·buf + d for parameters that also get a
    distillation gradient and m·buf + d for the others; p -= lr·buf. Distillation (after the task update): the
    buffer starts at g (no weight decay), then becomes (m + delta)·buf + g for parameters with both gradients, or
    m·buf + g + wd·p for distillation-only ones; p -= lr·buf. ``None`` marks a missing gradient or buffer.
    """
    for i, (p, g) in enumerate(zip(params, task_grads, strict=True)):
        if g is None:
            continue
        d = g + weight_decay * p
        buf = task_buffers[i]
        if buf is None:
            buf = task_buffers[i] = d.clone()
        else:
            buf.mul_(momentum - delta if kd_grads[i] is not None else momentum).add_(d)
        p.sub_(lr * buf)
    for i, (p, g) in enumerate(zip(params, kd_grads, strict=True)):
        if g is None:
            continue
        buf = kd_buffers[i]
        if buf is None:
            buf = kd_buffers[i] = g.clone()
        elif task_grads[i] is not None:
            buf.mul_(momentum + delta).add_(g)
        else:
            buf.mul_(momentum).add_(g + weight_decay * p)
        p.sub_(lr * buf)


class DistillationOrientedSGD(torch.optim.Optimizer):
    """SGD with a task and a distillation momentum buffer per parameter, stepped by :meth:`step_groups`.

    Each parameter group's ``lr``, ``momentum``, ``delta`` and ``weight_decay`` apply to its parameters; the buffers
    live in ``state[p]["momentum_buffer"]`` (task) and ``state[p]["momentum_kd_buffer"]``, so ``state_dict()``
    holds both.
    """

    def __init__(self, params: Any, *, lr: float, momentum: float, delta: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay})

    def step(self, closure: Any = None) -> None:
        """Not used: DOT needs the two gradients apart (:meth:`step_groups`)."""
        raise RuntimeError("DistillationOrientedSGD steps with step_groups({'task': grads, 'kd': grads})")

    @torch.no_grad()
    def step_groups(self, grads: Mapping[str, Sequence[Tensor | None]]) -> None:
        """One step from the ``task`` and ``kd`` gradients, one per parameter in ``param_groups`` order."""
        offset = 0
        for group in self.param_groups:
            params = group["params"]
            end = offset + len(params)
            states = [self.state.get(p, {}) for p in params]
            task_buffers = [s.get("momentum_buffer") for s in states]
            kd_buffers = [s.get("momentum_kd_buffer") for s in states]
            dot_update(params, grads["task"][offset:end], grads["kd"][offset:end], task_buffers, kd_buffers,
                       lr=group["lr"], momentum=group["momentum"], delta=group["delta"],
                       weight_decay=group["weight_decay"])
            for p, task, kd in zip(params, task_buffers, kd_buffers, strict=True):
                for key, buf in (("momentum_buffer", task), ("momentum_kd_buffer", kd)):
                    if buf is not None:
                        self.state[p][key] = buf
            offset = end


@register_method("dot")
class DistillationOrientedKD(LogitKD):
    """DOT: A Distillation-Oriented Trainer (Zhao, Cui, Song, Liang, ICCV 2023), on KD.

    Paper: https://arxiv.org/abs/2307.08436
    KD's terms (CE 0.1, KD 0.9 at T 4) trained by an SGD that keeps the cross-entropy and the distillation
    gradients apart: their momentum buffers decay at m - delta and m + delta, so the distillation gradient keeps
    more of its history (m the run's momentum, 0.9; delta 0.075: mdistiller ``configs/cifar100/dot/*.yaml``,
    ``engine/dot.py``, ``engine/trainer.py:DOT``; ImageNet: 0.09). As in the authors' code, the split applies to
    parameters that get both gradients (the others use m), weight decay enters only the task gradient of shared
    parameters, and the first distillation step of a distillation-only parameter skips it. SGD only.
    """

    @dataclass(frozen=True)
    class Params(LogitKD.Params):
        """Hyperparameters of DOT on KD.

        Attributes:
            temperature: softening T of both distributions.
            ce_weight: weight of the cross-entropy with the labels.
            kd_weight: weight of the distillation term.
            standardize: z-score both logits before the temperature.
            delta: the momentum gap: the task buffer decays at momentum - delta, the distillation one at + delta.
        """

        delta: float = field(default=0.075, metadata=valid(ge=0, lt=1) | tunable(0.025, 0.09))

    def __init__(self, params: Any, student: ModelInfo, teacher: ModelInfo | None, data: DatasetInfo,
                 context: RunContext | None = None) -> None:
        super().__init__(params, student, teacher, data, context)
        self.gradient_groups = {"task": ("loss_ce",), "kd": ("loss_kd",)}

    def make_optimizer(self, groups: list[dict[str, Any]], *, kind: str, lr: float, momentum: float,
                       weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
        """DOT's SGD over the run's groups; momentum ± delta must stay in [0, 1)."""
        delta = self.params.delta
        if kind != "sgd":
            raise ConfigError(f"dot trains with its own SGD (two momentum buffers); --optimizer {kind} is not "
                              "supported")
        if momentum - delta < 0 or momentum + delta >= 1:
            raise ConfigError(f"dot needs momentum ± delta in [0, 1) (momentum {momentum}, delta {delta})")
        return DistillationOrientedSGD(groups, lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay)
