"""The quick start: what `kdbench run` trains with no arguments, and its sweep twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.cli import build_parser
from kdbench.commands.run import QUICKSTART, RUN_DEFAULTS, build_run_specs
from kdbench.config import RunSpec
from kdbench.distiller import list_methods


def test_the_quickstart_sweep_is_the_quick_start_with_more_seeds():
    import yaml

    from kdbench.commands.run import QUICKSTART

    spec = yaml.safe_load((Path(__file__).parents[1] / "kdbench/resources/configs/quickstart.yaml").read_text())
    assert spec["dataset"] == QUICKSTART["dataset"]
    assert spec["pairs"] == [{"teacher": QUICKSTART["teacher"], "student": QUICKSTART["student"]}]
    assert spec["methods"] == list(QUICKSTART["methods"])
    assert set(QUICKSTART["seeds"]) <= set(spec["seeds"])
    assert {k: spec[k] for k in QUICKSTART["budget"]} == QUICKSTART["budget"]



def specs_of(argv: list[str]) -> list[RunSpec]:
    return build_run_specs(build_parser().parse_args(["run", *argv]))


def test_no_arguments_is_the_quick_start():
    specs = specs_of([])
    assert {s.method for s in specs} == set(QUICKSTART["methods"])
    assert {s.seed for s in specs} == set(QUICKSTART["seeds"]) and len(QUICKSTART["seeds"]) >= 2
    budget = QUICKSTART["budget"]
    for spec in specs:
        assert spec.dataset == QUICKSTART["dataset"] and spec.student == QUICKSTART["student"]
        assert (spec.image_size, spec.epochs, spec.batch_size, spec.lr, spec.warmup_epochs) == (
            budget["image_size"], budget["epochs"], budget["batch_size"], budget["lr"], budget["warmup_epochs"])
        assert spec.teacher_epochs in (budget["teacher_epochs"], 0)


def test_a_dataset_takes_the_run_defaults_and_explicit_flags_win():
    defaults = RUN_DEFAULTS
    specs = specs_of(["--dataset", "digits", "--method", "ce"])
    assert [s.seed for s in specs] == [defaults["seed"]]
    assert (specs[0].epochs, specs[0].lr, specs[0].image_size) == (defaults["epochs"], defaults["lr"], None)
    specs = specs_of(["--epochs", "3", "--method", "kd"])  # the quick start's budget, one flag changed
    assert specs[0].epochs == 3 and specs[0].image_size == QUICKSTART["budget"]["image_size"]


@pytest.mark.parametrize("argv", [["--method", "all"], ["--method", "all", "--method", "kd"]])
def test_method_all_runs_every_registered_method(argv):
    assert {s.method for s in specs_of(argv)} == set(list_methods())
