"""The search loop: trials asked under each study's lock and trained in batches, then the final runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.config import RunSpec
from kdbench.options import ExecOptions
from kdbench.results import read_record
from kdbench.scheduler import Placement, schedule
from kdbench.tune.pruning import PruningHook, TrialRef, _record_steps
from kdbench.tune.studies import StudyPlan, StudyState, StudyStore, _counts, _state, trial_value
from kdbench.tune.summary import final_specs, write_summary


def _tell(store: StudyStore, number: int, record: Mapping[str, Any]) -> None:
    """Tell trial ``number`` the outcome of its run's record: complete with its value, pruned, or failed."""
    from optuna.trial import TrialState

    if isinstance(record.get("history"), list):
        _record_steps(store.study, number, record["history"])
    value = trial_value(record)
    if record.get("status") == "pruned":
        store.study.tell(number, state=TrialState.PRUNED)  # Optuna keeps its last intermediate value as its value
    elif value is None:
        store.study.tell(number, state=TrialState.FAIL)
    else:
        store.study.tell(number, value)


def _sync(store: StudyStore, results: Path, ask: int) -> dict[str, tuple[RunSpec, int]]:
    """Under the study lock: tell trials whose records exist, adopt trials nobody finished, ask ``ask`` new ones.

    Returns the runs this process should execute, by run id, each with its trial's number: every running trial
    without a record (the engine skips a run another process has claimed, and trains one whose process died) and
    up to ``ask`` new trials while the budget allows. A new trial whose run is already recorded (the same
    configuration suggested twice) is told at once and counts against the budget like any other.
    """
    from optuna.trial import TrialState

    study, plan = store.study, store.plan
    todo: list[tuple[RunSpec, int]] = []
    with store.lock.held():
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            spec = store.spec_of(trial.params)
            if spec is None:  # asked by a process that died before all its parameters were written
                study.tell(trial.number, state=TrialState.FAIL)
                continue
            record = read_record(results, spec.run_id)
            if record is None:
                todo.append((spec, trial.number))
            else:
                _tell(store, trial.number, record)
        asked = 0
        while asked < ask:
            used, running = _counts(store)
            if used + running >= plan.settings.trials:
                break
            study.sampler = store.sampler(used + running)
            trial = study.ask(store.distributions())
            spec = store.spec_of(trial.params)
            assert spec is not None
            record = read_record(results, spec.run_id)
            if record is None:
                todo.append((spec, trial.number))
                asked += 1
            else:
                _tell(store, trial.number, record)
    out: dict[str, tuple[RunSpec, int]] = {}
    for spec, number in todo:
        out.setdefault(spec.run_id, (spec, number))
    return out


def search(stores: Sequence[StudyStore], options: ExecOptions, log: Callable[[str], None],
           placement: Placement | None = None) -> list[StudyState]:
    """Run trials until every study has used its budget, or what is left is being trained by other processes.

    Each round asks every unfinished study for ``parallel`` trials (see :class:`TuneSettings`) and hands them to
    the scheduler together, so trials of studies on one pair train in one cohort on one teacher pass, and an
    executor with several workers trains the cohorts at once. The trials of studies that prune go with a
    :class:`PruningHook`.

    Args:
        stores: the studies.
        options: where and how runs execute.
        log: where one-line notes go.
        placement: where the trials train (default: this process).
    """
    results = Path(options.results)
    while True:
        batch: list[RunSpec] = []
        refs: dict[str, TrialRef] = {}
        for store in stores:
            for run_id, (spec, number) in _sync(store, results, ask=store.plan.settings.parallel).items():
                batch.append(spec)
                if store.plan.settings.prune:
                    refs[run_id] = TrialRef(str(store.journal), store.plan.name, number, store.plan.settings)
        if not batch:
            break
        _train(batch, options, PruningHook(refs) if refs else None, placement, log)
        if not any(read_record(results, s.run_id) is not None for s in batch):
            log("tune: the remaining trials are being trained by other processes; leaving them to those")
            break
    for store in stores:
        _sync(store, results, ask=0)
    return [_state(store) for store in stores]


def _train(specs: Sequence[RunSpec], options: ExecOptions, hook: PruningHook | None, placement: Placement | None,
           log: Callable[[str], None]) -> None:
    """Hand a batch of runs to the scheduler, with the epoch hook of its trials; its problems become notes."""
    outcome = schedule(specs, dataclasses.replace(options, epoch_hook=hook), placement)
    for problem in outcome.problems:
        log(f"error: {problem}")


@dataclass
class TuneOutcome:
    """What :func:`run_tune` did: the study summaries and the runs that are not finished."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def all_trial_specs(stores: Sequence[StudyStore]) -> list[RunSpec]:
    """Every trial run the studies have asked for so far (for the plan)."""
    specs = {}
    for store in stores:
        for trial in store.study.get_trials(deepcopy=False):
            spec = store.spec_of(trial.params)
            if spec is not None:
                specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def run_tune(plans: Sequence[StudyPlan], options: ExecOptions, log: Callable[[str], None] = lambda line: None,
             placement: Placement | None = None) -> TuneOutcome:
    """Search every study, then train the best and default configurations with the final seeds, on test.

    The final runs of a study start only when all its trials are finished, and only after this process's search
    is over, so no run of this process reads the test split while it is still choosing configurations.

    Args:
        plans: the studies.
        options: where and how runs execute.
        log: where one-line notes go.
        placement: where trials and final runs train (default: this process; ``--executor ray`` spreads them over
            a cluster).
    """
    results = Path(options.results)
    stores = [StudyStore(results, plan) for plan in plans]
    states = search(stores, options, log, placement)
    for store in stores:
        write_summary(store, results)
    finals: list[RunSpec] = []
    outcome = TuneOutcome()
    for state in states:
        if not state.done:
            outcome.unfinished.append(f"{state.store.plan.name}: {state.used} of {state.store.plan.settings.trials} "
                                      f"trials finished, {state.running} running in another process")
            continue
        tuned, defaults = final_specs(state.store)
        finals.extend(tuned + defaults)
    if finals:
        _train(list({s.run_id: s for s in finals}.values()), options, None, placement, log)  # never pruned
    outcome.summaries = [write_summary(store, results) for store in stores]
    return outcome
