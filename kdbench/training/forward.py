"""The training forward passes: the teacher's outputs shared by a cohort, and the compiled forward."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdbench.features import forward_outputs
from kdbench.training.evaluation import autocast

if TYPE_CHECKING:
    from kdbench.training.member import Member


MAIN_VIEW = "main"


@dataclass
class TeacherOutput:
    """The teacher's logits, the union of the stage maps, the embedding and final map any member asked for.

    The tensors are inference tensors, which nothing can change in place; each member gets its own copy of
    what it asked for (:meth:`copy_for`), so a method that edits its teacher tensors in place cannot change what
    the next member of a cohort sees.
    """

    logits: Tensor
    features: dict[int, Tensor]
    embedding: Tensor | None = None
    final_map: Tensor | None = None

    def copy_for(self, stages: Sequence[int], embedding: bool, final_map: bool = False) -> TeacherOutput:
        """Normal (autograd-usable) copies of the logits, the given stages and, if asked, embedding and final map."""
        return TeacherOutput(self.logits.clone(), {i: self.features[i].clone() for i in stages},
                             self.embedding.clone() if (embedding and self.embedding is not None) else None,
                             self.final_map.clone() if (final_map and self.final_map is not None) else None)


def teacher_forward(teacher: nn.Module, images: Tensor, stages: Sequence[int], amp: bool,
                    embedding: bool = False, forward: Callable[..., Any] = forward_outputs,
                    final_map: bool = False) -> TeacherOutput:
    """Run the teacher once under ``inference_mode`` in eval mode (logits, the stages, embedding, final map).

    ``forward`` is :func:`~kdbench.features.forward_outputs` or its compiled form (:func:`compiled_forward`).
    """
    device = images.device
    with torch.inference_mode(), autocast(device, amp):
        out = forward(teacher, images, stages, embedding, final_map) if final_map else forward(
            teacher, images, stages, embedding)
    return TeacherOutput(out.logits, out.features, out.embedding, out.final_map)


def teacher_outputs(teacher: nn.Module, images: Tensor, views: dict[str, Tensor], users: Sequence[Member],
                     amp: bool) -> dict[str, TeacherOutput]:
    """One teacher pass per view that some user needs: the union of their stages, an embedding or final map if asked.

    The final map (``final_maps``) is computed on the main view only.
    """
    stages = sorted({s for m in users for s in m.method.teacher_stages})
    embedding = any(m.method.embeddings for m in users)
    final_map = any(getattr(m.method, "final_maps", False) for m in users)
    forward = users[0].forward  # compiled when the cohort's members are (one setting per cohort)
    out = {MAIN_VIEW: teacher_forward(teacher, images, stages, amp, embedding, forward, final_map)}
    for name, view in views.items():
        if any(name in m.method.extra_views for m in users):
            out[name] = teacher_forward(teacher, view, stages, amp, embedding, forward)
    return out


@functools.cache
def compiled_forward() -> Callable[..., Any]:
    """:func:`~kdbench.features.forward_outputs` under ``torch.compile`` (one wrapper per process).

    The function is compiled rather than the models, so that the models stay plain modules: evaluation, state
    dicts, deep copies and the efficiency measurement see them as they are, and a feature method's
    ``forward_intermediates`` pass is compiled as much as a plain forward.
    """
    return torch.compile(forward_outputs)
