"""DOT: a distillation-oriented SGD that keeps separate momentum buffers for the task and distillation gradients.

The update only: the method class must own the optimiser step (two backward passes, two gradient sets), which the
harness does not offer yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
