"""The ``local`` executor: the cohorts train one after another in this process (or on every torchrun rank)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from kdbench import distributed
from kdbench.config import RunSpec
from kdbench.engine import load_splits, progress_bars, run_cohort
from kdbench.env import resolve_device
from kdbench.errors import KDBenchError
from kdbench.executors.base import (
    Executor,
    RunBar,
    SweepJob,
    SweepOutcome,
    cohort_label,
    register_executor,
    trained_teacher_user,
)
from kdbench.options import ExecOptions
from kdbench.store import Store
from kdbench.teachers import prepare_teacher, teacher_cached, teacher_key


def _silent(line: str) -> None:
    """A log that drops its lines: the notes of every rank but rank 0."""


@register_executor("local")
class LocalExecutor(Executor):
    """Trains the cohorts one after another in this process.

    Each teacher is made ready (trained once, or found in the cache) just before the first cohort that needs it;
    a teacher that fails is not tried again for the cohorts after it, whose runs are left without records.

    Under torchrun (``torchrun --nproc-per-node N -m kdbench sweep``) every rank goes through the same cohorts (the
    scheduler broadcasts rank 0's plan) in the same order and trains each data-parallel (see
    :mod:`kdbench.distributed`); rank 0 takes every decision that depends on the results store or on a failure (each
    teacher's outcome) and broadcasts it, and only rank 0 writes notes.
    """

    def __init__(self) -> None:
        self.teacher_errors: dict[str, str] = {}
        self.teachers_ready: set[str] = set()

    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """See :meth:`Executor.run`."""
        _, device = distributed.setup(resolve_device(job.options.device))  # joins the ranks under torchrun
        main = distributed.is_main()
        write = job.options.log if main else _silent
        options = dataclasses.replace(job.options, log=write)
        outcome = SweepOutcome()
        for number, cohort in enumerate(job.cohorts, 1):
            error = distributed.broadcast(self._prepare_teacher(cohort, options, device, outcome) if main else None)
            if error is None:
                try:
                    run_cohort(cohort, options, device, label=f"[{number}/{len(job.cohorts)}]")
                except KDBenchError as err:  # under torchrun every rank raises it (rank 0's, shared)
                    error = f"{cohort_label(cohort)}: {err}"
                    outcome.problems.append(error)
                    outcome.errors.append(err)
                    write(f"FAILED {error}")
            if error is not None:
                outcome.give_up(cohort, None)
            if main:
                bar.settle(cohort)
        outcome.problems = distributed.broadcast(outcome.problems)  # every rank returns rank 0's outcome
        return outcome

    def _prepare_teacher(self, cohort: Sequence[RunSpec], options: ExecOptions, device: torch.device,
                         outcome: SweepOutcome) -> str | None:
        """Make the cohort's trained teacher ready in the cache (rank 0); the error line if it cannot be."""
        user = trained_teacher_user(cohort)
        if user is None:
            return None
        key = teacher_key(user)
        if key in self.teacher_errors:
            options.log(f"skipped {cohort_label(cohort)}: its teacher failed")
            return self.teacher_errors[key]
        cache = Store.of(options).teachers.folder
        if key in self.teachers_ready or teacher_cached(cache, key):
            self.teachers_ready.add(key)
            return None
        try:
            splits = load_splits(user, options, device)
            prepare_teacher(user, splits, device, cache, progress=progress_bars(options.progress), log=options.log)
        except KDBenchError as err:
            self.teacher_errors[key] = f"teacher {user.teacher} ({user.dataset}, {user.teacher_epochs} epochs): {err}"
            outcome.problems.append(self.teacher_errors[key])
            outcome.errors.append(err)
            options.log(f"FAILED {self.teacher_errors[key]}")
            return self.teacher_errors[key]
        self.teachers_ready.add(key)
        return None


