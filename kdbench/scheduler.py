"""The one path from run specs to records: plan against the store, place the cohorts, plan again, read the records.

``kdbench run`` (a one-pair local sweep), ``kdbench sweep`` and ``kdbench tune`` (each round of trials, then the
final runs) all call :func:`schedule`:

1. **plan** (:func:`kdbench.plan.make_plan`): skip what the store holds, group the rest into cohorts (runs that share
   a data stream and a teacher pass); under torchrun rank 0 plans and every rank gets its plan;
2. **place**: the executor of the :class:`Placement` (``local``, ``ray``, ``slurm``: :mod:`kdbench.executors`)
   trains each cohort where it belongs; wherever that is, :func:`kdbench.engine.run_cohort` claims the runs, trains
   them and writes their records, so a run is trained once however many processes share the store;
3. **plan again**: runs another process had claimed and then abandoned (it died) are trained now; runs another
   process is still training are left to it; cohorts whose teacher or start failed are not tried again in this
   invocation (a rerun of the command tries them);
4. **read**: the records of every asked-for run, in order.

A new executor plugs in at step 2 (a registered :class:`~kdbench.executors.Executor`); a new kind of run (a tuning
trial) is an ordinary run spec handed to :func:`schedule`, with an epoch hook in the options if it must watch or
stop its run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdbench import distributed
from kdbench.config import RunSpec
from kdbench.env import resolve_device
from kdbench.errors import KDBenchError
from kdbench.executors import EXECUTORS, RunBar, SweepJob
from kdbench.options import ExecOptions, Resources
from kdbench.plan import Plan, make_plan
from kdbench.results import read_record
from kdbench.store import Store


@dataclass(frozen=True)
class Placement:
    """Where cohorts train.

    Attributes:
        executor: a registered executor (``local``, ``ray``, ``slurm``).
        resources: what each task of a cluster executor asks for.
        plugins: method plugin files every worker loads first (absolute paths).
    """

    executor: str = "local"
    resources: Resources = field(default_factory=Resources)
    plugins: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What :func:`schedule` did.

    Attributes:
        plan: the first plan (what was done, failed and pending before anything trained).
        records: the records of the asked-for runs that the store holds now, in the order asked.
        problems: one line per teacher that could not be prepared or cohort that could not start.
        errors: the errors behind the problems that this process caught (the local executor's).
        missing: asked-for runs without a record (trained by another process, or given up after a problem).
    """

    plan: Plan
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    missing: list[RunSpec] = field(default_factory=list)


def _silent(line: str) -> None:
    """The log of every rank but rank 0."""


def schedule(specs: Sequence[RunSpec], options: ExecOptions, placement: Placement | None = None, *,
             plan: Plan | None = None, run_bar: bool = True) -> Outcome:
    """Train every run of ``specs`` the store does not hold yet, where ``placement`` says; read all their records.

    Args:
        specs: the runs asked for.
        options: where and how runs execute.
        placement: the executor and its resources (default: this process).
        plan: the plan already made against the store (``kdbench sweep`` prints it first); made here otherwise.
        run_bar: show a progress bar over runs (besides the per-cohort bars over steps).

    Under torchrun (the local executor) every rank calls it: rank 0 plans and every rank trains each cohort
    data-parallel; every rank returns rank 0's outcome.
    """
    placement = placement or Placement()
    executor = EXECUTORS.get(placement.executor)()
    if placement.executor == "local":
        distributed.setup(resolve_device(options.device))  # joins the ranks under torchrun
    main = distributed.is_main()
    if plan is None:
        plan = distributed.broadcast(make_plan(specs, options) if main else None)
    cohorts: list[list[RunSpec]] = distributed.broadcast(plan.cohorts if main else None)
    pending = [spec for cohort in cohorts for spec in cohort]
    store = Store.of(options)
    options = dataclasses.replace(options, log=options.log if main else _silent)
    outcome = Outcome(plan=plan)
    given_up: set[str] = set()
    resources = dataclasses.asdict(placement.resources)
    with RunBar(total=len(pending), enabled=run_bar and options.progress and main, store=store,
                specs=pending) as bar:
        while cohorts:
            job = SweepJob(cohorts=cohorts, options=options, plugins=placement.plugins, **resources)
            before = len(bar.finished)
            result = executor.run(job, bar)
            outcome.problems.extend(result.problems)
            outcome.errors.extend(result.errors)
            given_up |= result.given_up
            bar.settle(pending)  # runs other processes finished meanwhile count too
            progressed = len(bar.finished) > before
            cohorts = distributed.broadcast(
                _next_cohorts(pending, bar.finished | given_up, options) if main and progressed else [])
            options = dataclasses.replace(options, retry_failed=False)  # a failed run is retried once
    distributed.barrier()  # under torchrun: rank 0 has written every record before any rank reads them
    for spec in specs:
        record = read_record(options.results, spec.run_id)
        if record is None:
            outcome.missing.append(spec)
        else:
            outcome.records.append(record)
    return outcome


def _next_cohorts(pending: Sequence[RunSpec], settled: set[str], options: ExecOptions) -> list[list[RunSpec]]:
    """The cohorts of the next round (rank 0's decision): the runs still without a new record."""
    left = [spec for spec in pending if spec.run_id not in settled]
    return make_plan(left, dataclasses.replace(options, retry_failed=False)).cohorts if left else []


def execute(specs: Sequence[RunSpec], options: ExecOptions) -> list[dict[str, Any]]:
    """Train in this process every run of ``specs`` that is not done yet; return the records of all of them, in order.

    Records of finished runs are read from the store, so the return value is the whole picture either way.

    Raises:
        KDBenchError: a teacher could not be prepared, or a cohort could not start: the first such error, as it was
            raised (a :class:`~kdbench.errors.DataError` stays one).
    """
    outcome = schedule(specs, options, run_bar=False)
    if outcome.errors:
        raise outcome.errors[0]
    if outcome.problems:
        raise KDBenchError(outcome.problems[0])
    return outcome.records
