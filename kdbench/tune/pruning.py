"""Pruning: intermediate values from the training loop, and the engine's epoch hook that reports them.

:class:`PruningHook` travels with the execution options to Ray and Slurm workers, so it pickles and is importable
there as ``kdbench.tune.PruningHook`` (or ``kdbench.tune.pruning.PruningHook``).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.config import RunSpec, build_params
from kdbench.distiller import generations_of, get_method
from kdbench.tune.journal import open_study
from kdbench.tune.spec import TuneSettings

if TYPE_CHECKING:
    import optuna


def intermediate_values(history: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Step -> validation top-1 of a run's history: what a trial reports to its pruner.

    A step is a main-phase epoch counted from 0 (Optuna's convention); the epochs of an initialisation phase are
    not steps, and a method that trains several generations keeps counting, so each step is one more epoch of
    training. Epochs without a validation top-1 report nothing.
    """
    values: dict[int, float] = {}
    step = -1
    for entry in history:
        if entry.get("phase") == "init":
            continue
        step += 1
        value = entry.get("val_top1")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values[step] = float(value)
    return values


def _trial_id(study: optuna.Study, number: int) -> int:
    """The storage id of trial ``number`` of ``study``."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def _record_steps(study: optuna.Study, number: int, history: Sequence[Mapping[str, Any]]) -> None:
    """Report the steps of ``history`` that trial ``number`` lacks: the study's intermediate values are the records'.

    A trial lacks them when its run was trained without its hook: the same configuration asked by two trials, or
    by a study that does not prune.
    """
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    missing = {step: v for step, v in intermediate_values(history).items() if step not in trial.intermediate_values}
    if missing:
        trial_id = _trial_id(study, number)
        for step, value in sorted(missing.items()):
            study._storage.set_trial_intermediate_value(trial_id, step, value)


@dataclass(frozen=True)
class TrialRef:
    """Where a trial lives: its study's journal and name, its number, and the settings of its pruner."""

    journal: str
    study: str
    number: int
    settings: TuneSettings


class PruningHook:
    """The engine's epoch hook (:attr:`kdbench.options.ExecOptions.epoch_hook`) for a batch of trials.

    For a run of ``trials`` it returns a listener that reports each epoch's validation top-1 to the run's trial
    and raises :class:`~kdbench.training.RunPruned` when the study's pruner says stop (never at the run's last
    epoch, which would save nothing); other runs get no listener. It pickles for Ray and Slurm workers: the
    studies are opened lazily, once per process, from the journals (on the results store the workers share).

    Args:
        trials: run id -> its trial.
    """

    def __init__(self, trials: Mapping[str, TrialRef]) -> None:
        self.trials = dict(trials)
        self._studies: dict[tuple[str, str], optuna.Study] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"trials": self.trials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.trials, self._studies = state["trials"], {}

    def __call__(self, spec: RunSpec) -> Callable[[dict[str, Any]], None] | None:
        """The listener of run ``spec`` (``None`` if it is not one of the trials)."""
        ref = self.trials.get(spec.run_id)
        if ref is None or not ref.settings.prune:
            return None
        cls = get_method(spec.method)
        steps = spec.epochs * generations_of(cls, build_params(cls.Params, spec.method_params, spec.method))
        return _TrialReporter(self, ref, steps)

    def study(self, ref: TrialRef) -> optuna.Study:
        """The study of ``ref``, opened once per process."""
        key = (ref.journal, ref.study)
        if key not in self._studies:
            self._studies[key] = open_study(Path(ref.journal), ref.study, ref.settings)
        return self._studies[key]


class _TrialReporter:
    """One trial's epoch listener (see :class:`PruningHook`)."""

    def __init__(self, hook: PruningHook, ref: TrialRef, steps: int) -> None:
        self.hook, self.ref, self.steps = hook, ref, steps
        self.history: list[dict[str, Any]] = []

    def __call__(self, entry: dict[str, Any]) -> None:
        import optuna

        from kdbench.training import RunPruned

        self.history.append(entry)
        values = intermediate_values(self.history)
        step = sum(e.get("phase") != "init" for e in self.history) - 1  # this entry's step, if it is one
        if entry.get("phase") == "init" or step not in values:
            return  # an initialisation epoch, or an epoch without a validation top-1
        study = self.hook.study(self.ref)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step reported by a process that died and left the run to us
                trial = optuna.trial.Trial(study, _trial_id(study, self.ref.number))
                trial.report(values[step], step)
                prune = step < self.steps - 1 and trial.should_prune()
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # told meanwhile from a record of the same configuration: nothing to decide
        if prune:
            raise RunPruned(f"pruned after epoch {step + 1} of {self.steps}: {_pruned_reason(study, values, step)}")


def _pruned_reason(study: optuna.Study, values: Mapping[int, float], step: int) -> str:
    """Why the median pruner stopped a trial at ``step``, in words."""
    from optuna.trial import TrialState

    others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if step in t.intermediate_values]
    best = max(v for s, v in values.items() if s <= step)
    median = statistics.median(others) if others else math.nan
    return (f"best validation top-1 {best:.1f}% below the median of the complete trials at that epoch "
            f"({median:.1f}%)")
