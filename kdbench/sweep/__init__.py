"""Leaderboard sweeps: a YAML spec of pairs x methods x parameter grids x seeds, checked, expanded and executed.

A sweep spec is plain data read with ``yaml.safe_load``. Its keys are those of ``kdbench run`` (with underscores),
so a spec and a command line say the same thing and share one results store: a run of the sweep and the same run
asked for by ``kdbench run`` have the same run id, and neither trains it twice. A minimal spec::

    dataset: digits
    epochs: 1
    teacher_epochs: 1
    pairs:
      - {teacher: resnet18, student: mobilenetv3_small_050}
    methods: [ce, kd]
    seeds: [0, 1]

``methods`` may instead map each method to a parameter grid (``{kd: {temperature: [2, 4, 8]}, at: {}}``), and a
pair entry may override any training-budget key for its runs (``lr: 0.01``). Every problem of a spec is reported,
one line each, before anything is written; ``configs/README.md`` describes every key.

The keys, their types, defaults, ranges and checks are the fields of typed dataclasses
(:mod:`kdbench.sweep.schema`): :data:`RunBudget` (derived from :class:`~kdbench.config.RunSpec`: every field that is
not the run's identity, checked by RunSpec's own validation), :class:`PairEntry`, :class:`ExecutionSettings` and
:class:`SweepKeys`. One checker reads any of them (:mod:`kdbench.sweep.checking`), so a field added to ``RunSpec``
is a sweep key at once. :mod:`kdbench.sweep.loading` reads spec files and the shipped specs;
:mod:`kdbench.sweep.expansion` turns a checked spec into runs and checks its data and models.
"""

from __future__ import annotations

from kdbench.sweep.checking import parse_sweep_spec
from kdbench.sweep.expansion import check_sweep_data, expand_sweep
from kdbench.sweep.loading import PACKAGED_CONFIGS, load_sweep_spec, packaged_configs, read_spec_data
from kdbench.sweep.schema import (
    BUDGET_KEYS,
    EXECUTION_DEFAULTS,
    EXECUTION_KEYS,
    PAIR_KEYS,
    RUN_IDENTITY,
    SWEEP_KEYS,
    ExecutionSettings,
    PairEntry,
    RunBudget,
    SpecError,
    SweepKeys,
    SweepSpec,
    schema_types,
    spec_key,
)

__all__ = [
    "BUDGET_KEYS", "EXECUTION_DEFAULTS", "EXECUTION_KEYS", "PACKAGED_CONFIGS", "PAIR_KEYS", "RUN_IDENTITY",
    "SWEEP_KEYS", "ExecutionSettings", "PairEntry", "RunBudget", "SpecError", "SweepKeys", "SweepSpec",
    "check_sweep_data", "expand_sweep", "load_sweep_spec", "packaged_configs", "parse_sweep_spec",
    "read_spec_data", "schema_types", "spec_key",
]
