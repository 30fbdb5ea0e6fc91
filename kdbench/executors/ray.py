"""The ``ray`` executor: each cohort is a Ray task (or a Ray Train run across several workers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdbench.config import RunSpec
from kdbench.engine import run_cohort
from kdbench.errors import ConfigError
from kdbench.executors.base import (
    Executor,
    RunBar,
    SweepJob,
    SweepOutcome,
    cohort_label,
    register_executor,
    trained_teacher_user,
)
from kdbench.executors.tasks import (
    _one_line,
    _worker_setup,
    report_result,
    run_cohort_task,
    train_teacher_task,
    worker_fields,
)
from kdbench.results import read_record
from kdbench.store import Store
from kdbench.teachers import teacher_cached, teacher_key


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
        run_config=RunConfig(name=f"kdbench-{cohort[0].run_id}",
                             storage_path=str(Store(fields["results"]).executor_dir("ray"))),
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
            if user and key not in teacher_refs and not teacher_cached(Store.of(job.options).teachers.folder, key):
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
        what = cohort_label(cohort) if cohort else "teacher task"
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            result = {"log": [], "error": _one_line(err), "finished": []}
        report_result(result, what, bar, outcome, cohort)


