"""The ``slurm`` executor: each teacher to train and each cohort is a Slurm job, submitted through submitit."""

from __future__ import annotations

import os
from typing import Any

from kdbench.config import RunSpec
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
from kdbench.executors.tasks import RequeueableCohort, _one_line, report_result, train_teacher_task, worker_fields
from kdbench.store import Store
from kdbench.teachers import teacher_cached, teacher_key


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

    A job runs the same tasks as the Ray executor (:func:`train_teacher_task`, then :func:`run_cohort_task`, as a
    :class:`RequeueableCohort` that submitit requeues when Slurm preempts it or its time runs out), so a
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
        executor = submitit.AutoExecutor(folder=Store.of(job.options).executor_dir("slurm"),
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
            if user and key not in teachers and not teacher_cached(Store.of(job.options).teachers.folder, key):
                teachers[key] = executor.submit(train_teacher_task, user, fields, plugins, job.num_gpus)
        failed = {key for key, handle in teachers.items() if self._collect(handle, None, bar, outcome)}
        handles = []
        for number, cohort in enumerate(job.cohorts, 1):
            user = trained_teacher_user(cohort)
            if user and teacher_key(user) in failed:
                bar.write(f"skipped {cohort_label(cohort)}: its teacher failed")
                outcome.give_up(cohort, None)
                continue
            label = f"[{number}/{len(job.cohorts)}]"
            handles.append((executor.submit(RequeueableCohort(), cohort, fields, plugins, job.num_gpus, label),
                            cohort))
        for handle, cohort in handles:
            self._collect(handle, cohort, bar, outcome)
        return outcome

    @staticmethod
    def _collect(handle: Any, cohort: list[RunSpec] | None, bar: RunBar, outcome: SweepOutcome) -> bool:
        """Wait for one job and report it; ``True`` when it failed."""
        what = cohort_label(cohort) if cohort else "teacher job"
        try:
            result = handle.result()
        except Exception as err:  # noqa: BLE001 - a job that died (killed, timed out) is one line
            result = {"log": [], "error": f"job {handle.job_id}: {_one_line(err)}", "finished": []}
        return report_result(result, what, bar, outcome, cohort)
