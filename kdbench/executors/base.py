"""What every executor shares: the registry, the job of one planning round, its outcome, the bar over runs."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from tqdm.auto import tqdm

from kdbench.config import RunSpec
from kdbench.options import ExecOptions, Resources
from kdbench.registry import Registry
from kdbench.store import Store

#: the registered executors, by name
EXECUTORS: Registry[type[Executor]] = Registry("executor")


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: register an :class:`Executor` subclass as ``kdbench sweep --executor NAME``."""

    def decorate(cls: type[Executor]) -> type[Executor]:
        EXECUTORS.register(name, cls)
        return cls

    return decorate


@dataclass
class SweepJob:
    """The work an executor is given.

    Attributes:
        cohorts: the pending runs, grouped into cohorts (each trains on one data stream and one teacher pass).
        options: execution options; ``results`` and ``teacher_cache`` absolute, so workers elsewhere find them.
        plugins: absolute paths of method plugin files every worker loads first.
        num_cpus: CPUs per Ray task.
        num_gpus: GPUs per Ray task (fractions share a GPU).
        ray_address: the Ray cluster to connect to; ``None`` for Ray's own choice.
        gpus_per_run: Ray executor: train each cohort data-parallel on this many Ray Train workers (one GPU each;
            CPU workers with ``device: cpu``); 1 trains it in one task.
    """

    cohorts: list[list[RunSpec]]
    options: ExecOptions
    plugins: Sequence[str] = ()
    num_cpus: float = Resources.num_cpus
    num_gpus: float = Resources.num_gpus
    ray_address: str | None = Resources.ray_address
    gpus_per_run: int = Resources.gpus_per_run

    @property
    def pending(self) -> list[RunSpec]:
        """Every run of every cohort."""
        return [spec for cohort in self.cohorts for spec in cohort]


@dataclass
class SweepOutcome:
    """What went wrong outside the runs themselves (a failed run has a ``failed`` record instead).

    Attributes:
        problems: one line per teacher that could not be prepared or cohort that could not start.
        given_up: run ids of the cohorts behind those problems: the scheduler does not plan them again in this
            invocation (a rerun of the command tries them again).
        errors: the errors behind the problems, where this process caught them (the local executor), so that a
            caller in code can raise the first as it was raised.
    """

    problems: list[str] = field(default_factory=list)
    given_up: set[str] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)

    def give_up(self, cohort: Sequence[RunSpec], problem: str | None) -> None:
        """Note ``problem`` (if any) and leave ``cohort``'s runs out of this invocation's next plans."""
        if problem is not None:
            self.problems.append(problem)
        self.given_up.update(spec.run_id for spec in cohort)


class RunBar:
    """A progress bar over runs, with ETA; the place where one-line notes are written without breaking it.

    It counts a run as finished when its record in ``store`` appears or changes after the bar started (another
    process's finish counts too), so every executor advances it the same way: :meth:`settle` on what it trained.
    """

    def __init__(self, total: int, enabled: bool = True, store: Store | None = None,
                 specs: Sequence[RunSpec] = ()) -> None:
        self._bar = tqdm(total=total, desc="sweep", unit="run", disable=not enabled, file=sys.stderr,
                         dynamic_ncols=True)
        self.store = store
        self._start = {spec.run_id: store.record_stamp(spec.run_id) for spec in specs} if store else {}
        self.finished: set[str] = set()

    def settle(self, specs: Sequence[RunSpec]) -> int:
        """Advance by the runs of ``specs`` whose record appeared or changed since the start; how many."""
        if self.store is None:
            return 0
        new = {s.run_id for s in specs if s.run_id in self._start and s.run_id not in self.finished
               and self.store.record_stamp(s.run_id) != self._start[s.run_id]}
        self.finished.update(new)
        if new:
            self._bar.update(len(new))
        return len(new)

    @staticmethod
    def write(line: str) -> None:
        """Print a line above the bar."""
        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()

    def __enter__(self) -> RunBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class Executor(ABC):
    """Places the cohorts of a :class:`SweepJob`: where they train, nothing more.

    The scheduler (:func:`kdbench.scheduler.schedule`) plans the cohorts, calls :meth:`run` once per planning round
    on one instance (so an executor may remember what it learned, such as a teacher that failed), and plans again
    after each round. Every run's outcome goes to the results store, written by :func:`kdbench.engine.run_cohort`.
    """

    @abstractmethod
    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """Train ``job``'s cohorts, settling ``bar`` on the cohorts that end."""


def cohort_label(cohort: Sequence[RunSpec]) -> str:
    """A cohort in words, for notes: its pair, seed and number of runs."""
    teacher = next((s.teacher for s in cohort if s.teacher), None) or "none"
    students = ", ".join(sorted({s.student for s in cohort}))
    return f"{teacher} -> {students} seed {cohort[0].seed} ({len(cohort)} run{'s' * (len(cohort) != 1)})"


def trained_teacher_user(cohort: Sequence[RunSpec]) -> RunSpec | None:
    """A run of ``cohort`` whose teacher kdbench trains (a cohort shares one teacher), or ``None``."""
    return next((s for s in cohort if s.teacher is not None and s.teacher_source == "trained"), None)


