"""The tasks that cluster executors run on their workers: make a teacher ready, train a cohort.

Ray and Slurm (submitit) run the same tasks, so a run is claimed in the results store and its record written
atomically wherever it trains: workers that die leave no record, and a rerun trains what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kdbench.config import RunSpec
from kdbench.distiller import discover_methods, load_plugin_file
from kdbench.engine import load_splits, run_cohort
from kdbench.env import resolve_device
from kdbench.errors import KDBenchError
from kdbench.executors.base import RunBar, SweepOutcome
from kdbench.options import ExecOptions
from kdbench.results import read_record
from kdbench.store import Store
from kdbench.teachers import prepare_teacher


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def report_result(result: dict[str, Any], what: str, bar: RunBar, outcome: SweepOutcome,
                  cohort: Sequence[RunSpec] | None = None) -> bool:
    """Report what a worker task (``train_teacher_task``, ``run_cohort_task``) returned; ``True`` when it failed.

    Its notes and a ready teacher go to the bar, an error to the bar and ``outcome.problems``; the bar settles on
    ``cohort`` (the runs the task trained), which is given up for this invocation when it failed or was skipped.
    ``what`` names the cohort (or the teacher task) in the lines.
    """
    for line in result["log"]:
        bar.write(line)
    if result.get("skipped"):
        bar.write(f"skipped {what}: its teacher failed")
    if result.get("kind") == "teacher" and not result["error"]:
        bar.write(f"teacher {result['teacher']} ready ({result['time_s']:.1f} s)")
    if result["error"]:
        message = result["error"] if result.get("kind") == "teacher" else f"{what}: {result['error']}"
        outcome.problems.append(message)
        bar.write(f"FAILED {message}")
    if cohort:
        bar.settle(cohort)
        if result["error"] or result.get("skipped"):
            outcome.give_up(cohort, None)
    return bool(result["error"])


def worker_fields(options: ExecOptions) -> dict[str, Any]:
    """The execution options a worker needs, as plain picklable data (no log callback, no progress bars)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in ("log", "progress")}


def worker_device(device: str, num_gpus: float) -> torch.device:
    """The device of a Ray task: ``auto`` means the GPU Ray gave the task, or the CPU when it gave none."""
    if device == "auto":
        device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return resolve_device(device)


def _worker_setup(fields: dict[str, Any], plugins: Sequence[str], num_gpus: float,
                  log: Callable[[str], None]) -> tuple[ExecOptions, torch.device]:
    """Prepare a Ray worker: load the plugins, rebuild the options, pick the device."""
    discover_methods()
    for plugin in plugins:
        load_plugin_file(plugin)
    options = ExecOptions(**fields, progress=False, log=log)
    return options, worker_device(options.device, num_gpus)


def train_teacher_task(spec: RunSpec, fields: dict[str, Any], plugins: Sequence[str],
                       num_gpus: float) -> dict[str, Any]:
    """Ray task: make sure ``spec``'s teacher is in the teacher cache (trained once, under the cache's lock)."""
    lines: list[str] = []
    started = time.perf_counter()
    try:
        options, device = _worker_setup(fields, plugins, num_gpus, lines.append)
        splits = load_splits(spec, options, device)
        prepare_teacher(spec, splits, device, Store.of(options).teachers.folder, log=lines.append)
        error = None
    except Exception as err:  # noqa: BLE001 - reported in one line; the cohorts that need it are skipped
        detail = str(err) if isinstance(err, KDBenchError) else _one_line(err)
        error = f"teacher {spec.teacher} ({spec.dataset}, {spec.teacher_epochs} epochs): {detail}"
    return {"kind": "teacher", "teacher": spec.teacher, "error": error, "log": lines,
            "time_s": time.perf_counter() - started}


def run_cohort_task(cohort: list[RunSpec], fields: dict[str, Any], plugins: Sequence[str], num_gpus: float,
                    label: str, *teachers: dict[str, Any]) -> dict[str, Any]:
    """Ray task: train one cohort after its teacher task (passed in ``teachers``, so Ray runs that one first)."""
    if any(t.get("error") for t in teachers):
        return {"kind": "cohort", "finished": [], "log": [], "error": None, "skipped": True}
    lines: list[str] = []
    try:
        options, device = _worker_setup(fields, plugins, num_gpus, lines.append)
        run_cohort(cohort, options, device, label=label)
        error = None
    except KDBenchError as err:
        error = str(err)
    finished = [s.run_id for s in cohort if read_record(fields["results"], s.run_id) is not None]
    return {"kind": "cohort", "finished": finished, "log": lines, "error": error}


class RequeueableCohort:
    """A cohort job that Slurm may preempt or time out: :func:`run_cohort_task` that submitit can requeue.

    submitit's checkpointing support calls :meth:`checkpoint` when the job receives the preemption (or time-limit)
    signal and requeues the returned submission; the requeued job runs the same cohort again, and each run goes on
    from its last checkpoint in the results store (see :mod:`kdbench.training.checkpoint`).
    """

    def __call__(self, *args: Any) -> dict[str, Any]:
        """Run the cohort (:func:`run_cohort_task`'s arguments)."""
        return run_cohort_task(*args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The submission submitit requeues: this job again, with the same arguments."""
        from submitit.helpers import DelayedSubmission  # the slurm executor's optional dependency

        return DelayedSubmission(self, *args, **kwargs)
