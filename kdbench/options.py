"""Execution options as plain data: where and how runs execute, never what they compute.

A leaf module (it imports nothing of kdbench at run time): the spec layer (:mod:`kdbench.sweep`), the commands, the
scheduler and the executors all read their execution defaults here, so none of them imports another for a default.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:  # annotations only: the options sit below the configuration layer
    from kdbench.config import RunSpec


#: the values of ``--save-students``: which of a run's trained students are kept beside its record
SAVE_STUDENTS = ("none", "last", "best", "both")


def _note_above_bars(line: str) -> None:
    """The default log: one line on stderr, above any progress bar."""
    tqdm.write(line, file=sys.stderr)


@dataclass
class ExecOptions:
    """Where and how runs execute; nothing here changes what a run computes.

    Attributes:
        results: the results store folder.
        teacher_cache: where trained teachers are cached (default ``<results>/teachers``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: root folder of file-based datasets (else ``$KDBENCH_DATA``).
        download: download CIFAR when missing.
        cohort: train runs that share a teacher together (one teacher pass per batch).
        max_cohort: the most runs in one cohort (a memory cap).
        retry_failed: run again the runs whose record says ``failed``.
        progress: show progress bars.
        measure: measure the student's efficiency (params, MACs, latency, throughput) into each record.
        save_students: which trained students each ``ok`` run keeps beside its record, as safetensors (one of
            :data:`SAVE_STUDENTS`: ``last`` the weights the record's top-1 is of, ``best`` those of the best
            validation epoch, ``both``, or ``none``); see :mod:`kdbench.artifacts`.
        log: where one-line notes and per-run summaries go.
        trackers: experiment trackers that receive each run's per-epoch history (``tensorboard``, ``mlflow``,
            ``wandb``; see :mod:`kdbench.trackers`).
        compile: run the training forward passes of students and teacher under ``torch.compile``. Like the
            device, it changes how a run executes, not what it computes, so it is not part of the run id; each
            record states it (``compile``).
        checkpoint_every: write each run's checkpoint at the end of every this many epochs (0: never at epoch
            ends); an interrupted run resumes from its last checkpoint (see :mod:`kdbench.training.checkpoint`).
        checkpoint_minutes: also write one between two steps when this many minutes passed since the last (for
            long epochs); ``None``: only at epoch ends.
        keep_checkpoints: keep a run's checkpoint once its record is written (default: removed then).
        epoch_hook: called with each run's spec before it trains; what it returns (if not ``None``) is added to
            the run's epoch listeners and called with each history entry. A listener that raises
            :class:`~kdbench.training.RunPruned` stops its run early with status ``pruned`` (``kdbench tune``'s
            pruning). It travels to Ray and Slurm workers, so it must pickle (a module-level class's instance,
            not a lambda); under torchrun every rank calls it, so its decisions must agree across ranks.
    """

    results: Path = Path("results")
    teacher_cache: Path | None = None
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    cohort: bool = True
    max_cohort: int = 8
    retry_failed: bool = False
    progress: bool = True
    measure: bool = True
    save_students: str = "last"
    log: Callable[[str], None] = field(default=_note_above_bars)
    trackers: tuple[str, ...] = ()
    compile: bool = False
    checkpoint_every: int = 1
    checkpoint_minutes: float | None = None
    keep_checkpoints: bool = False
    epoch_hook: Callable[[RunSpec], Callable[[dict[str, Any]], None] | None] | None = None


@dataclass(frozen=True)
class Resources:
    """What each task of a cluster executor asks for, and where the cluster is.

    Attributes:
        num_cpus: CPUs per Ray task or Slurm job.
        num_gpus: GPUs per Ray task (fractions share a GPU) or Slurm job (rounded up).
        ray_address: the Ray cluster to connect to; ``None`` for Ray's own choice.
        gpus_per_run: Ray executor: train each cohort data-parallel on this many Ray Train workers (one GPU each;
            CPU workers with ``device: cpu``); 1 trains it in one task.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str | None = None
    gpus_per_run: int = 1
