"""Experiment trackers: each run's per-epoch history streamed to TensorBoard, MLflow or Weights & Biases.

``kdbench run --log tensorboard`` (and ``kdbench sweep --log ...``; repeatable) hands every entry the run record's
``history`` gets to each asked-for tracker as the epoch ends: one tracker run per kdbench run, named by its run id,
with the run's settings as parameters, and the record's headline figures when the run ends. Trackers only observe:
what a run computes and records is the same with or without them.

- ``tensorboard``: event files under ``<results>/tensorboard/<run_id>/`` (view with
  ``tensorboard --logdir RESULTS/tensorboard``); torch's ``SummaryWriter``, which needs the ``tensorboard`` package.
- ``mlflow``: experiment ``kdbench`` in the tracking store of ``$MLFLOW_TRACKING_URI``, else in the local file store
  ``<results>/mlruns`` (view with ``mlflow ui --backend-store-uri RESULTS/mlruns``).
- ``wandb``: project ``$WANDB_PROJECT`` (else ``kdbench``); ``WANDB_MODE=offline`` writes the runs locally for a
  later ``wandb sync``.

Each tracker's package is optional and imported only when asked for; a missing one is one error line before anything
trains (:func:`check_trackers`). A tracker that fails while a run trains is reported once and dropped; the run goes on.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.config import RunSpec
from kdbench.errors import ConfigError
from kdbench.store import Store
from kdbench.training import Member

#: tracker name -> (the module it needs, the package that provides it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
#: record fields a tracker gets as the run's summary when it ends
SUMMARY_FIELDS = ("top1", "top5", "nll", "ece", "agreement", "val_top1", "best_val_top1", "test_top1_at_best_val",
                  "teacher_top1", "params_m", "gmacs", "train_time_s")
#: history fields that say where an entry is rather than what was measured
_POSITION_FIELDS = ("phase", "epoch", "generation")


def check_trackers(names: Sequence[str]) -> None:
    """Check that every tracker in ``names`` is known and its package installed.

    Raises:
        ConfigError: an unknown tracker, or a missing package (with the command that installs it).
    """
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r} for --log; use one of {', '.join(TRACKERS)}")
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--log {name} needs the {package} package: pip install 'kdbench[{name}]'")


def epoch_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The measured values of a history entry, by name: numbers only; initialisation-phase ones as ``init/<name>``."""
    prefix = "init/" if entry.get("phase") == "init" else ""
    return {f"{prefix}{key}": float(value) for key, value in entry.items()
            if key not in _POSITION_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)}


def run_params(spec: RunSpec) -> dict[str, str]:
    """The run's settings as flat text parameters (mappings and lists as JSON)."""
    return {key: json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
            for key, value in spec.as_dict().items()}


def summary_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's headline figures that are numbers."""
    return {key: float(record[key]) for key in SUMMARY_FIELDS
            if isinstance(record.get(key), int | float) and not isinstance(record.get(key), bool)}


class RunTracker(ABC):
    """One kdbench run in one tracker. Closed when :meth:`finish` is called, else when the process exits.

    A subclass opens its run in ``__init__`` and then calls :meth:`opened`.
    """

    closed = True

    def opened(self) -> None:
        """Mark the tracker's run open: from now on it is closed once, at the latest when the process exits."""
        self.closed = False
        atexit.register(self.close)

    @abstractmethod
    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one history entry's metrics at ``step`` (the entry's position in the history, from 1)."""

    @abstractmethod
    def log_summary(self, record: Mapping[str, Any]) -> None:
        """Log the finished run's status and headline figures."""

    @abstractmethod
    def _close(self) -> None:
        """Flush and release the tracker's run."""

    def finish(self, record: Mapping[str, Any]) -> None:
        """Log the run's summary and close."""
        self.log_summary(record)
        self.close()

    def close(self) -> None:
        """Release the tracker's run (once)."""
        if not self.closed:
            self.closed = True
            atexit.unregister(self.close)
            self._close()


class TensorBoardTracker(RunTracker):
    """Event files under ``<results>/tensorboard/<run_id>/``."""

    def __init__(self, spec: RunSpec, label: str, results: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

        self.writer = SummaryWriter(log_dir=str(Store(results).tracker_dir("tensorboard") / spec.run_id))
        self.writer.add_text("run", f"{label}: {spec.teacher or 'none'} -> {spec.student} on {spec.dataset}, "
                                    f"seed {spec.seed}")
        self.writer.add_text("settings", json.dumps(run_params(spec), indent=1, sort_keys=True))
        self.opened()

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """See :meth:`RunTracker.log_epoch`."""
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_summary(self, record: Mapping[str, Any]) -> None:
        """See :meth:`RunTracker.log_summary`."""
        for name, value in summary_metrics(record).items():
            self.writer.add_scalar(f"final/{name}", value, 0)
        self.writer.add_text("status", str(record.get("status")) + (f": {record['error']}" if record.get("error")
                                                                    else ""))

    def _close(self) -> None:
        self.writer.close()


class MlflowTracker(RunTracker):
    """A run in experiment ``kdbench`` of ``$MLFLOW_TRACKING_URI``'s store, else of ``<results>/mlruns``."""

    EXPERIMENT = "kdbench"

    def __init__(self, spec: RunSpec, label: str, results: Path) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 asks for an explicit opt-in to its file store, the offline default here
            uri = Store(results).tracker_dir("mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.status = RunStatus
        experiment = self.client.get_experiment_by_name(self.EXPERIMENT)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.EXPERIMENT))
        self.run_id = self.client.create_run(experiment_id, run_name=spec.run_id,
                                             tags={"kdbench.method_label": label}).info.run_id
        params = [Param(key, value[:6000]) for key, value in run_params(spec).items()]
        self.client.log_batch(self.run_id, params=params)
        self.outcome = "FAILED"
        self.opened()

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """See :meth:`RunTracker.log_epoch`."""
        for name, value in metrics.items():
            self.client.log_metric(self.run_id, name, value, step=step)

    def log_summary(self, record: Mapping[str, Any]) -> None:
        """See :meth:`RunTracker.log_summary`."""
        for name, value in summary_metrics(record).items():
            self.client.log_metric(self.run_id, f"final_{name}", value)
        self.outcome = "FINISHED" if record.get("status") == "ok" else "FAILED"

    def _close(self) -> None:
        self.client.set_terminated(self.run_id, status=self.outcome)


class WandbTracker(RunTracker):
    """A run in project ``$WANDB_PROJECT`` (else ``kdbench``); ``WANDB_MODE=offline`` keeps it local."""

    def __init__(self, spec: RunSpec, label: str, results: Path) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kdbench"), name=spec.run_id,
                              config=spec.as_dict(), tags=[spec.method, label], dir=str(results),
                              reinit="create_new")
        self.opened()

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """See :meth:`RunTracker.log_epoch`."""
        self.run.log(dict(metrics), step=step)

    def log_summary(self, record: Mapping[str, Any]) -> None:
        """See :meth:`RunTracker.log_summary`."""
        self.run.summary.update({**summary_metrics(record), "status": record.get("status")})

    def _close(self) -> None:
        self.run.finish(exit_code=0)


_KINDS: dict[str, type[RunTracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker,
                                       "wandb": WandbTracker}


def attach_trackers(names: Sequence[str], member: Member, results: Path,
                    log: Callable[[str], None]) -> list[RunTracker]:
    """Open a tracker run for ``member`` in each tracker of ``names`` and stream its history entries to them.

    Args:
        names: tracker names (see :data:`TRACKERS`).
        member: the run being trained; each entry appended to its history is logged as it comes.
        results: the results store (TensorBoard's and MLflow's default homes are inside it).
        log: where a note goes when a tracker fails (it is then dropped; training goes on).

    Returns:
        The open trackers; hand them to :func:`finish_trackers` with the run's record.
    """
    trackers: list[RunTracker] = []
    for name in names:
        try:
            trackers.append(_KINDS[name](member.spec, member.label, Path(results)))
        except Exception as err:  # noqa: BLE001 - a tracker never stops a run; it is reported and left out
            log(f"warning: --log {name}: cannot start a run for {member.spec.run_id}: {_first_line(err)}")

    def stream(entry: Mapping[str, Any]) -> None:
        metrics = epoch_metrics(entry)
        for tracker in list(trackers):
            try:
                tracker.log_epoch(metrics, len(member.history))
            except Exception as err:  # noqa: BLE001 - as above
                trackers.remove(tracker)
                log(f"warning: --log: dropped {type(tracker).__name__} for {member.spec.run_id}: {_first_line(err)}")

    if trackers:
        member.epoch_listeners.append(stream)
    return trackers


def finish_trackers(trackers: Sequence[RunTracker], record: Mapping[str, Any], log: Callable[[str], None]) -> None:
    """Log ``record``'s summary to each tracker and close it."""
    for tracker in trackers:
        try:
            tracker.finish(record)
        except Exception as err:  # noqa: BLE001 - the record is written already; a tracker cannot undo it
            log(f"warning: --log: {type(tracker).__name__} failed to close {record.get('run_id')}: {_first_line(err)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
