"""Equal-budget tuning: every method of a spec gets the same number of trials, selected on the validation split.

A tune spec is a sweep spec (:mod:`kdbench.sweep`) with a ``tune:`` section::

    dataset: mnist5k
    epochs: 5
    pairs:
      - {teacher: resnet18, student: mobilenetv3_small_050}
    methods: [ce, kd, at]
    seeds: [0, 1, 2]          # the final seeds: the best configuration is retrained with each, on test
    tune:
      trials: 12              # per (pair, method): the same for every method
      seed: 0                 # the sampler's seed
      trial_seed: 0           # the student seed of every trial
      prune: false            # stop trials early whose validation top-1 trails (Optuna's MedianPruner)

For each (pair, method) a *study* searches the method's declared search space (``Params`` fields with
:func:`kdbench.distiller.tunable` metadata) together with the harness's learning rate and weight decay, with
Optuna's TPE sampler. Each trial is an ordinary kdbench run (a :class:`~kdbench.config.RunSpec` with
``eval_split="val"``: its accuracy is measured on the validation split and the test split is never read), executed
by the scheduler (:func:`kdbench.scheduler.schedule`) like any other run, so trials are records of the results
store like any other run: they resume, de-duplicate, and train in cohorts that share one teacher pass. When a study
has used its trials, the best configuration (highest validation top-1) is trained again with the final seeds and
evaluated on test; with ``defaults: true`` (the default) the method's default configuration is trained with the
same seeds, so the report can put default and tuned side by side.

Study state lives in the store's ``tuning/`` folder (:meth:`kdbench.store.Store.study`): one Optuna journal per
study (appends guarded by an OS file lock, which the OS releases when a process dies, and a torn last line repaired
on open), one lock file that makes "count the trials and ask for the next" atomic across processes, and a JSON
summary the report reads. Records are the truth: a trial whose run has a record is told its value from the record,
never trained again; a trial left running by a process that died is trained by the next process that finds it
unclaimed.

With ``prune: true`` each trial reports its validation top-1 after every epoch (an epoch hook of the engine,
:class:`PruningHook`), and Optuna's median pruner stops a trial whose best value so far trails the median of the
finished trials at the same epoch. The run is then recorded with status ``pruned``: finished, never trained again,
and counted against the budget like a complete trial; only complete trials compete for the best configuration.

The package's rooms: :mod:`~kdbench.tune.space` (search spaces), :mod:`~kdbench.tune.spec` (the ``tune:``
section), :mod:`~kdbench.tune.studies` (plans and stores), :mod:`~kdbench.tune.journal` (Optuna journals and their
locks), :mod:`~kdbench.tune.pruning` (the epoch hook), :mod:`~kdbench.tune.loop` (the search and :func:`run_tune`)
and :mod:`~kdbench.tune.summary` (best trial, final runs, summaries); every public name is importable from
``kdbench.tune``.
"""

from __future__ import annotations

from kdbench.tune.journal import import_optuna, make_pruner, open_study, pruner_settings, repair_journal
from kdbench.tune.loop import TuneOutcome, all_trial_specs, run_tune, search
from kdbench.tune.pruning import PruningHook, TrialRef, intermediate_values
from kdbench.tune.space import (
    HARNESS_PARAMS,
    HARNESS_RANGE_FACTOR,
    SIGNIFICANT_DIGITS,
    ZERO_WEIGHT_DECAY_RANGE,
    SearchParam,
    describe_search_space,
    harness_search_space,
    method_search_space,
)
from kdbench.tune.spec import TUNE_KEYS, TuneSettings, TuneSpec, load_tune_spec, parse_tune_spec
from kdbench.tune.studies import StudyPlan, StudyState, StudyStore, plan_studies, trial_value
from kdbench.tune.summary import best_trial, final_specs, load_summaries, study_summary, write_summary

__all__ = [
    "HARNESS_PARAMS", "HARNESS_RANGE_FACTOR", "PruningHook", "SIGNIFICANT_DIGITS",
    "SearchParam", "StudyPlan", "StudyState", "StudyStore", "TUNE_KEYS", "TrialRef", "TuneOutcome",
    "TuneSettings", "TuneSpec", "ZERO_WEIGHT_DECAY_RANGE", "all_trial_specs", "best_trial",
    "describe_search_space", "final_specs", "harness_search_space", "import_optuna", "intermediate_values",
    "load_summaries", "load_tune_spec", "make_pruner", "method_search_space", "open_study", "parse_tune_spec",
    "plan_studies", "pruner_settings", "repair_journal", "run_tune", "search", "study_summary", "trial_value",
    "write_summary",
]
