"""Executors: where the cohorts of a sweep train: ``local`` (this process), ``ray`` and ``slurm`` (submitit).

``local`` is the default; ``ray`` runs on a Ray cluster, ``slurm`` submits Slurm jobs. Each hands each cohort
(runs sharing a data stream and a teacher pass) to :func:`kdbench.engine.run_cohort`, which
claims its runs with OS file locks in the results store and writes each record atomically. So any number of
executors, processes and Ray workers may work on one store at once, and any of them may die at any moment: a run
is trained by one of them, its record is whole or absent, and a rerun trains only what is missing.

A new executor is a subclass of :class:`Executor` registered with :func:`register_executor`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from tqdm.auto import tqdm

from kdbench import distributed
from kdbench.config import RunSpec
from kdbench.distiller import discover_methods, load_plugin_file
from kdbench.engine import load_splits, progress_bars, run_cohort
from kdbench.env import resolve_device
from kdbench.errors import ConfigError, KDBenchError
from kdbench.options import ExecOptions, Resources
from kdbench.plan import make_plan
from kdbench.registry import Registry
from kdbench.results import read_record, record_path
from kdbench.teachers import prepare_teacher, teacher_cached, teacher_key

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
    """

    problems: list[str] = field(default_factory=list)


class RunBar:
    """A progress bar over runs, with ETA; the place where one-line notes are written without breaking it."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = tqdm(total=total, desc="sweep", unit="run", disable=not enabled, file=sys.stderr,
                         dynamic_ncols=True)

    def advance(self, runs: int) -> None:
        """Count ``runs`` more finished runs."""
        if runs:
            self._bar.update(runs)

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
    """Trains the cohorts of a :class:`SweepJob`; every run's outcome goes to the results store."""

    @abstractmethod
    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """Train ``job``'s cohorts, advancing ``bar`` as runs finish."""


def _record_stamp(results: Path, run_id: str) -> int | None:
    try:
        return os.stat(record_path(results, run_id)).st_mtime_ns
    except FileNotFoundError:
        return None


def _cohort_label(cohort: Sequence[RunSpec]) -> str:
    teacher = next((s.teacher for s in cohort if s.teacher), None) or "none"
    students = ", ".join(sorted({s.student for s in cohort}))
    return f"{teacher} -> {students} seed {cohort[0].seed} ({len(cohort)} run{'s' * (len(cohort) != 1)})"


# ---------------------------------------------------------------------------------------------------------------
# local


def trained_teacher_user(cohort: Sequence[RunSpec]) -> RunSpec | None:
    """A run of ``cohort`` whose teacher kdbench trains (a cohort shares one teacher), or ``None``."""
    return next((s for s in cohort if s.teacher is not None and s.teacher_source == "trained"), None)


@register_executor("local")
class LocalExecutor(Executor):
    """Trains the cohorts one after another in this process.

    Each teacher is made ready (trained once, or found in the cache) just before the first cohort that needs it;
    a teacher that fails is not tried again for the cohorts after it, whose runs are left without records. When
    it has gone through every cohort, it plans again: runs another process had claimed and then abandoned (it
    died) are trained now; runs another process is still training are left to it.

    Under torchrun (``torchrun --nproc-per-node N -m kdbench sweep``) every rank goes through the same cohorts in the
    same order and trains each data-parallel (see :mod:`kdbench.distributed`); rank 0 takes every decision that
    depends on the results store or on a failure (the cohorts, each teacher's outcome, the next plan) and
    broadcasts it, and only rank 0 writes notes.
    """

    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """See :meth:`Executor.run`."""
        return _LocalSweep(job, bar).run()


def _silent(line: str) -> None:
    """A log that drops its lines: the notes of every rank but rank 0."""


class _LocalSweep:
    """The state of one local execution: teachers made ready or failed, runs finished, problems."""

    def __init__(self, job: SweepJob, bar: RunBar) -> None:
        self.job = job
        self.bar = bar
        _, self.device = distributed.setup(resolve_device(job.options.device))  # joins the ranks under torchrun
        self.main = distributed.is_main()
        self.cohorts: list[list[RunSpec]] = distributed.broadcast(job.cohorts)  # rank 0's plan, on every rank
        self.pending = [spec for cohort in self.cohorts for spec in cohort]
        self.write = bar.write if self.main else _silent
        self.options = dataclasses.replace(job.options, log=self.write)
        self.outcome = SweepOutcome()
        self.teacher_errors: dict[str, str] = {}
        self.teachers_ready: set[str] = set()
        self.start = {spec.run_id: _record_stamp(self.options.results, spec.run_id) for spec in self.pending}
        self.finished: set[str] = set()

    def run(self) -> SweepOutcome:
        given_up: set[str] = set()
        cohorts = self.cohorts
        while cohorts:
            progressed = 0
            for number, cohort in enumerate(cohorts, 1):
                error = self.prepare_teacher(cohort)
                if error is None:
                    try:
                        run_cohort(cohort, self.options, self.device, label=f"[{number}/{len(cohorts)}]")
                    except KDBenchError as err:  # under torchrun every rank raises it (rank 0's, shared)
                        error = str(err)
                        self.outcome.problems.append(f"{_cohort_label(cohort)}: {err}")
                        self.write(f"FAILED {_cohort_label(cohort)}: {err}")
                if error is not None:
                    given_up.update(s.run_id for s in cohort)
                progressed += self.count_finished(cohort)
            cohorts = distributed.broadcast(self.next_plan(progressed, given_up) if self.main else None)
            self.options = dataclasses.replace(self.options, retry_failed=False)  # a failed run is retried once
        self.outcome.problems = distributed.broadcast(self.outcome.problems)  # every rank returns rank 0's outcome
        return self.outcome

    def next_plan(self, progressed: int, given_up: set[str]) -> list[list[RunSpec]]:
        """The cohorts of the next pass (rank 0's decision): what is still missing, or none when nothing progressed."""
        self.count_finished(self.pending)  # runs other processes finished meanwhile
        if not progressed:
            return []
        options = dataclasses.replace(self.options, retry_failed=False)
        left = [s for s in self.pending if s.run_id not in self.finished and s.run_id not in given_up]
        return make_plan(left, options).cohorts if left else []

    def count_finished(self, specs: Sequence[RunSpec]) -> int:
        """Count (and advance the bar by) the runs of ``specs`` whose record appeared or changed since the start.

        Rank 0 counts; the other ranks count nothing (the next plan is rank 0's).
        """
        if not self.main:
            return 0
        new = {s.run_id for s in specs if s.run_id not in self.finished
               and _record_stamp(self.options.results, s.run_id) != self.start[s.run_id]}
        self.finished.update(new)
        self.bar.advance(len(new))
        return len(new)

    def prepare_teacher(self, cohort: Sequence[RunSpec]) -> str | None:
        """Make the cohort's trained teacher ready in the cache; the error line if it cannot be.

        Under torchrun rank 0 prepares (trains) it while the others wait, and every rank gets rank 0's outcome.
        """
        return distributed.broadcast(self._prepare_teacher(cohort) if self.main else None)

    def _prepare_teacher(self, cohort: Sequence[RunSpec]) -> str | None:
        user = trained_teacher_user(cohort)
        if user is None:
            return None
        key = teacher_key(user)
        if key in self.teacher_errors:
            self.write(f"skipped {_cohort_label(cohort)}: its teacher failed")
            return self.teacher_errors[key]
        if key in self.teachers_ready or teacher_cached(self.options.teacher_dir, key):
            self.teachers_ready.add(key)
            return None
        try:
            splits = load_splits(user, self.options, self.device)
            prepare_teacher(user, splits, self.device, self.options.teacher_dir,
                            progress=progress_bars(self.options.progress), log=self.write)
        except KDBenchError as err:
            self.teacher_errors[key] = f"teacher {user.teacher} ({user.dataset}, {user.teacher_epochs} epochs): {err}"
            self.outcome.problems.append(self.teacher_errors[key])
            self.write(f"FAILED {self.teacher_errors[key]}")
            return self.teacher_errors[key]
        self.teachers_ready.add(key)
        return None


# ---------------------------------------------------------------------------------------------------------------
# ray


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray  # imported on use: an optional dependency, and a slow import every other command can skip
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'kdbench[ray]'") from None
    return ray


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def report_result(result: dict[str, Any], what: str, bar: RunBar, outcome: SweepOutcome) -> bool:
    """Report what a worker task (``train_teacher_task``, ``run_cohort_task``) returned; ``True`` when it failed.

    Its notes and a ready teacher go to the bar, an error to the bar and ``outcome.problems``, and the bar advances
    by the runs it finished. ``what`` names the cohort (or the teacher task) in the lines.
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
    bar.advance(len(result.get("finished", [])))
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
        prepare_teacher(spec, splits, device, options.teacher_dir, log=lines.append)
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


def _ray_train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: this worker trains the cohort as one rank of a data-parallel run."""
    from kdbench import distributed

    options, device = _worker_setup(config["fields"], config["plugins"], 1.0 if config["use_gpu"] else 0.0,
                                    lambda line: None)
    _, device = distributed.setup(device)  # Ray Train set the process group and the torchrun variables up
    run_cohort(config["cohort"], options, device, label=config["label"])


def run_cohort_ray_train_task(cohort: list[RunSpec], fields: dict[str, Any], plugins: Sequence[str], workers: int,
                              num_cpus: float, label: str, *teachers: dict[str, Any]) -> dict[str, Any]:
    """Ray task: train one cohort data-parallel on ``workers`` Ray Train workers (see :mod:`kdbench.distributed`)."""
    if any(t.get("error") for t in teachers):
        return {"kind": "cohort", "finished": [], "log": [], "error": None, "skipped": True}
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = fields["device"] != "cpu"
    config = {"cohort": cohort, "fields": fields, "plugins": list(plugins), "label": label, "use_gpu": use_gpu}
    trainer = TorchTrainer(
        _ray_train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": num_cpus, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"kdbench-{cohort[0].run_id}", storage_path=str(Path(fields["results"]) / "ray")),
    )
    error = None
    try:
        trainer.fit()
    except Exception as err:  # noqa: BLE001 - a cohort that could not train is one line; its runs have no record
        error = _one_line(err)
    finished = [s.run_id for s in cohort if read_record(fields["results"], s.run_id) is not None]
    return {"kind": "cohort", "finished": finished, "log": [], "error": error}


@register_executor("ray")
class RayExecutor(Executor):
    """Each cohort is one Ray task with ``num_cpus`` / ``num_gpus``; teachers train first, in tasks of their own.

    Every node must see the results folder (and the teacher cache, the data root and plugin files) at the same
    absolute path: a shared file system. Records are written there by the workers, as the local executor would.
    """

    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """See :meth:`Executor.run`."""
        if not job.cohorts:
            return SweepOutcome()
        ray = import_ray()
        started_here = self._connect(ray, job.ray_address, bar)
        try:
            return self._run(ray, job, bar)
        finally:
            if started_here:
                ray.shutdown()

    @staticmethod
    def _connect(ray: Any, address: str | None, bar: RunBar) -> bool:
        """Connect to (or start) a Ray cluster; ``True`` when this call did, so the caller shuts it down."""
        if ray.is_initialized():
            return False
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f" at {address}" if address else ""
            raise ConfigError(f"cannot connect to the Ray cluster{where}: {_one_line(err)}") from None
        return True

    @staticmethod
    def _describe_cluster(ray: Any, job: SweepJob, bar: RunBar) -> None:
        """One line about the cluster; a warning when no node can hold a task of the asked-for size."""
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        bar.write(f"ray: {len(ray.nodes())} node(s), {cpus:g} CPUs, {gpus:g} GPUs; each task takes "
                  f"{job.num_cpus:g} CPU(s) and {job.num_gpus:g} GPU(s)")
        if job.num_gpus > gpus or job.num_cpus > cpus:
            bar.write(f"warning: the cluster has {cpus:g} CPUs and {gpus:g} GPUs; tasks wait until a node that "
                      "fits them joins (pass --num-cpus / --num-gpus to change their size)")

    def _run(self, ray: Any, job: SweepJob, bar: RunBar) -> SweepOutcome:
        outcome = SweepOutcome()
        self._describe_cluster(ray, job, bar)
        fields = worker_fields(job.options)
        plugins = list(job.plugins)
        resources = {"num_cpus": job.num_cpus, "num_gpus": job.num_gpus}
        teacher_task = ray.remote(train_teacher_task).options(name="kdbench-teacher", **resources)
        cohort_task = ray.remote(run_cohort_task).options(name="kdbench-cohort", **resources)
        if job.gpus_per_run > 1:  # the task only drives a Ray Train run; its workers take the resources
            train_task = ray.remote(run_cohort_ray_train_task).options(name="kdbench-cohort", num_cpus=0)
        teacher_refs: dict[str, Any] = {}
        tasks: dict[Any, list[RunSpec] | None] = {}
        for number, cohort in enumerate(job.cohorts, 1):
            needs = []
            user = trained_teacher_user(cohort)
            key = teacher_key(user) if user else None
            if user and key not in teacher_refs and not teacher_cached(job.options.teacher_dir, key):
                teacher_refs[key] = teacher_task.remote(user, fields, plugins, job.num_gpus)
                tasks[teacher_refs[key]] = None
            if key in teacher_refs:
                needs.append(teacher_refs[key])
            label = f"[{number}/{len(job.cohorts)}]"
            if job.gpus_per_run > 1:
                ref = train_task.remote(cohort, fields, plugins, job.gpus_per_run, job.num_cpus, label, *needs)
            else:
                ref = cohort_task.remote(cohort, fields, plugins, job.num_gpus, label, *needs)
            tasks[ref] = cohort
        outstanding = list(tasks)
        try:
            while outstanding:
                ready, outstanding = ray.wait(outstanding, num_returns=1)
                for ref in ready:
                    self._collect(ray, ref, tasks[ref], bar, outcome)
        except KeyboardInterrupt:
            for ref in outstanding:
                ray.cancel(ref, force=True)
            raise
        return outcome

    @staticmethod
    def _collect(ray: Any, ref: Any, cohort: list[RunSpec] | None, bar: RunBar, outcome: SweepOutcome) -> None:
        """Report one finished task: its notes, its error, the runs it finished."""
        what = _cohort_label(cohort) if cohort else "teacher task"
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            result = {"log": [], "error": _one_line(err), "finished": []}
        report_result(result, what, bar, outcome)


def import_submitit() -> Any:
    """The ``submitit`` module, or a one-line :class:`ConfigError` when it is not installed."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install 'kdbench[slurm]'") from None
    return submitit


#: submitit's cluster for ``--executor slurm`` (``slurm``; ``local`` runs the jobs as local processes, for tests)
SLURM_CLUSTER_ENV = "KDBENCH_SLURM_CLUSTER"
#: the Slurm partition jobs go to (else the cluster's default)
SLURM_PARTITION_ENV = "KDBENCH_SLURM_PARTITION"
#: the time limit of each job, in minutes (default one day)
SLURM_TIMEOUT_ENV = "KDBENCH_SLURM_TIMEOUT_MIN"


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Each teacher to train and each cohort is one Slurm job, submitted through submitit.

    A job runs the same tasks as the Ray executor (:func:`train_teacher_task`, then :func:`run_cohort_task`), so a
    run is claimed with an OS file lock in the results store and its record written atomically: jobs that die or
    time out leave no record, and a rerun trains what is missing. The teachers' jobs finish before the cohorts'
    jobs are submitted. Each job asks for ``--num-cpus`` CPUs and ``--num-gpus`` GPUs (rounded up). The results
    folder (and the teacher cache, the data and the plugins) must be on a file system the nodes share; submitit's
    logs go to ``<results>/slurm/``. ``KDBENCH_SLURM_PARTITION`` and ``KDBENCH_SLURM_TIMEOUT_MIN`` (default 1440)
    set the partition and the time limit; ``KDBENCH_SLURM_CLUSTER=local`` runs the jobs as local processes.
    """

    def run(self, job: SweepJob, bar: RunBar) -> SweepOutcome:
        """See :meth:`Executor.run`."""
        outcome = SweepOutcome()
        if not job.cohorts:
            return outcome
        submitit = import_submitit()
        executor = submitit.AutoExecutor(folder=Path(job.options.results) / "slurm",
                                         cluster=os.environ.get(SLURM_CLUSTER_ENV) or None)
        parameters: dict[str, Any] = {"name": "kdbench", "timeout_min": int(os.environ.get(SLURM_TIMEOUT_ENV, "1440")),
                                      "cpus_per_task": max(1, int(-(-job.num_cpus // 1))),
                                      "gpus_per_node": int(-(-job.num_gpus // 1))}
        if os.environ.get(SLURM_PARTITION_ENV):
            parameters["slurm_partition"] = os.environ[SLURM_PARTITION_ENV]
        executor.update_parameters(**parameters)
        fields = worker_fields(job.options)
        plugins = list(job.plugins)
        teachers: dict[str, Any] = {}
        for cohort in job.cohorts:
            user = trained_teacher_user(cohort)
            key = teacher_key(user) if user else None
            if user and key not in teachers and not teacher_cached(job.options.teacher_dir, key):
                teachers[key] = executor.submit(train_teacher_task, user, fields, plugins, job.num_gpus)
        failed = {key for key, handle in teachers.items() if self._collect(handle, None, bar, outcome)}
        handles = []
        for number, cohort in enumerate(job.cohorts, 1):
            user = trained_teacher_user(cohort)
            if user and teacher_key(user) in failed:
                bar.write(f"skipped {_cohort_label(cohort)}: its teacher failed")
                continue
            label = f"[{number}/{len(job.cohorts)}]"
            handles.append((executor.submit(run_cohort_task, cohort, fields, plugins, job.num_gpus, label), cohort))
        for handle, cohort in handles:
            self._collect(handle, cohort, bar, outcome)
        return outcome

    @staticmethod
    def _collect(handle: Any, cohort: list[RunSpec] | None, bar: RunBar, outcome: SweepOutcome) -> bool:
        """Wait for one job and report it; ``True`` when it failed."""
        what = _cohort_label(cohort) if cohort else "teacher job"
        try:
            result = handle.result()
        except Exception as err:  # noqa: BLE001 - a job that died (killed, timed out) is one line
            result = {"log": [], "error": f"job {handle.job_id}: {_one_line(err)}", "finished": []}
        return report_result(result, what, bar, outcome)
