"""Executors: where the cohorts of a sweep train: ``local`` (this process), ``ray`` and ``slurm`` (submitit).

``local`` is the default; ``ray`` runs on a Ray cluster, ``slurm`` submits Slurm jobs. Each hands each cohort
(runs sharing a data stream and a teacher pass) to :func:`kdbench.engine.run_cohort`, which
claims its runs with OS file locks in the results store and writes each record atomically. So any number of
executors, processes and Ray workers may work on one store at once, and any of them may die at any moment: a run
is trained by one of them, its record is whole or absent, and a rerun trains only what is missing.

A new executor is a subclass of :class:`Executor` registered with :func:`register_executor`.

The package's rooms: :mod:`~kdbench.executors.base` (the registry, :class:`SweepJob`, :class:`SweepOutcome`,
:class:`RunBar`, :class:`Executor`), :mod:`~kdbench.executors.local`, :mod:`~kdbench.executors.tasks` (what Ray and
Slurm workers run), :mod:`~kdbench.executors.ray` and :mod:`~kdbench.executors.slurm`.
"""

from kdbench.executors import local, ray, slurm  # noqa: F401 - each registers its executor
from kdbench.executors.base import (
    EXECUTORS,
    Executor,
    RunBar,
    SweepJob,
    SweepOutcome,
    cohort_label,
    register_executor,
    trained_teacher_user,
)
from kdbench.executors.local import LocalExecutor
from kdbench.executors.ray import RayExecutor, import_ray
from kdbench.executors.slurm import (
    SLURM_CLUSTER_ENV,
    SLURM_PARTITION_ENV,
    SLURM_TIMEOUT_ENV,
    SlurmExecutor,
    import_submitit,
)
from kdbench.executors.tasks import (
    report_result,
    run_cohort_task,
    train_teacher_task,
    worker_device,
    worker_fields,
)

__all__ = [
    "EXECUTORS", "SLURM_CLUSTER_ENV", "SLURM_PARTITION_ENV", "SLURM_TIMEOUT_ENV", "Executor", "LocalExecutor",
    "RayExecutor", "RunBar", "SlurmExecutor", "SweepJob", "SweepOutcome", "cohort_label", "import_ray",
    "import_submitit", "register_executor", "report_result", "run_cohort_task", "train_teacher_task",
    "trained_teacher_user", "worker_device", "worker_fields",
]
