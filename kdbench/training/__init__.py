"""Training: a cohort of students trained on one data stream with one teacher pass per batch.

A run trained alone is a cohort of one, so there is one code path. Each member keeps its own RNG state and swaps
it in around its own work, so its result does not depend on who else is in the cohort: a run's record on CPU is
identical whether it trained alone or with others. Every member sees the same batches in the same order with the
same augmentation, which makes method comparisons paired by construction.

The package's rooms, each of one concern: ``rng`` (a member's private random state, :class:`RNGState`),
``optim`` (the optimiser and the learning-rate schedule), ``evaluation`` (:func:`predict` and the metrics),
``forward`` (the teacher's outputs shared by a cohort, the compiled forward), ``member`` (:class:`Member`: one run
inside a cohort) and ``loop`` (:func:`train_members`, the cohort loop, and its :class:`StepClock`). Every public
name is importable from ``kdbench.training``.
"""

from __future__ import annotations

from kdbench.training.evaluation import (
    ECE_BINS,
    Predictions,
    autocast,
    classification_metrics,
    predict,
    to_memory_format,
    top1,
)
from kdbench.training.forward import MAIN_VIEW, TeacherOutput, compiled_forward, teacher_forward, teacher_outputs
from kdbench.training.loop import INIT_STREAM, ProgressHook, StepClock, train_members
from kdbench.training.member import EpochStats, Member, NonFiniteLoss, RunPruned
from kdbench.training.optim import learning_rate, make_optimizer, set_learning_rate
from kdbench.training.rng import RNGState, ensure_mode, host_rngs_preserved

__all__ = [
    "ECE_BINS",
    "INIT_STREAM",
    "MAIN_VIEW",
    "EpochStats",
    "Member",
    "NonFiniteLoss",
    "Predictions",
    "ProgressHook",
    "RNGState",
    "RunPruned",
    "StepClock",
    "TeacherOutput",
    "autocast",
    "classification_metrics",
    "compiled_forward",
    "ensure_mode",
    "host_rngs_preserved",
    "learning_rate",
    "make_optimizer",
    "predict",
    "set_learning_rate",
    "teacher_forward",
    "teacher_outputs",
    "to_memory_format",
    "top1",
    "train_members",
]
