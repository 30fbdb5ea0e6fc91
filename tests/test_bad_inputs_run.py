"""Bad inputs to a run, met by a careful adversarial user (issue 28): one line and exit 2, or a result that is right.

Datasets that cannot make a classifier, seeds outside their range, hostile plugins and sizes out of bounds are one
line (``kdbench: error: ...``) with exit code 2 and nothing written; a member of a cohort sees inputs no other
member can change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import BUDGET_FLAGS, assert_one_line_error, cli, record_files, run_args

# ---------------------------------------------------------------------------------------------------------------
# 3: a dataset that cannot make a classifier is refused before training, whatever its source


def synthetic_args(results: Path, *options: str, val_fraction: str = "0.1") -> list:
    data = [item for option in options for item in ("--data-option", option)]
    return ["run", "--dataset", "synthetic", *data, "--val-fraction", val_fraction, "--method", "ce",
            "--student", TINY_STUDENT, *BUDGET_FLAGS, "--results", results]


DATA_CASES = {
    "synthetic with one class": (
        lambda r: synthetic_args(r, "num_classes=1", "size=8"), ("synthetic", "1 class", "at least 2 classes")),
    "synthetic with fewer samples than classes": (
        lambda r: synthetic_args(r, "num_classes=10", "num_samples=5", "size=8"),
        ("synthetic", "5 images for 10 classes", "class 5 without images")),
    "digits with val fraction 0.999": (
        lambda r: run_args(r, "--method", "ce", "--val-fraction", "0.999"),
        ("digits", "1 training image left", "val fraction 0.999", "nothing to train on")),
    "synthetic with too few images for a test split": (
        lambda r: synthetic_args(r, "num_classes=2", "num_samples=2", "size=8", val_fraction="0"),
        ("synthetic", "no test images")),
    "synthetic whose val fraction holds out nothing": (
        lambda r: synthetic_args(r, "num_classes=2", "num_samples=12", "size=8", val_fraction="0.01"),
        ("synthetic", "val fraction 0.01 holds out no image", "--val-fraction 0")),
}


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_a_dataset_that_cannot_make_a_classifier_is_one_line(name, tmp_path, capsys):
    build, fragments = DATA_CASES[name]
    results = tmp_path / "results"
    code, _, err = cli(build(results), capsys)
    assert_one_line_error(code, err, *fragments)
    assert not record_files(results)


def test_a_sweep_over_a_dataset_that_cannot_make_a_classifier_is_refused(tmp_path, capsys):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"dataset: synthetic\nepochs: 1\ndata_options: {{num_classes: 1, size: 8}}\n"
                    f"pairs: [{{student: {TINY_STUDENT}}}]\nmethods: [ce]\ndevice: cpu\n")
    results = tmp_path / "results"
    code, _, err = cli(["sweep", spec, "--results", results, "--no-progress"], capsys)
    assert code == 2 and "at least 2 classes" in err and "Traceback" not in err, err
    assert not record_files(results)


# ---------------------------------------------------------------------------------------------------------------
# 4: one range of seeds, [0, 2^32 - 1], checked before anything runs, the same in run, sweep and tune

SEED_CASES = {
    "seed 2^32": (["--seeds", str(2**32)], "seed must be an integer from 0 to 4294967295"),
    "seed 2^64": (["--seeds", str(2**64)], "seed must be an integer from 0 to 4294967295"),
    "seed -1": (["--seeds", "-1"], "seed must be an integer from 0 to 4294967295"),
    "teacher seed 2^64": (["--teacher-seed", str(2**64)], "teacher seed must be an integer from 0 to 4294967295"),
    "teacher seed -1": (["--teacher-seed", "-1"], "teacher seed must be an integer from 0 to 4294967295"),
}


@pytest.mark.parametrize("name", list(SEED_CASES))
def test_a_seed_out_of_range_is_one_line_in_run(name, tmp_path, capsys):
    extra, message = SEED_CASES[name]
    results = tmp_path / "results"
    code, _, err = cli(run_args(results, "--method", "ce", "--method", "kd", *extra), capsys)
    assert_one_line_error(code, err, message)
    assert not record_files(results)


def test_the_largest_seed_is_a_seed_of_its_own():
    from kdbench.config import SEED_MAX
    from kdbench.plan import make_spec

    specs = [make_spec(dataset="digits", student=TINY_STUDENT, method="ce", teacher=None, seed=seed)
             for seed in (0, SEED_MAX)]
    assert specs[0].run_id != specs[1].run_id


@pytest.mark.parametrize(("key", "value"), [("seeds", [0, 2**32]), ("seeds", [2**64]), ("teacher_seed", 2**64),
                                            ("teacher_seed", -1)])
def test_a_seed_out_of_range_is_refused_by_sweep_before_a_plan(key, value, tmp_path, capsys):
    import yaml

    spec = tmp_path / "sweep.yaml"
    data = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "device": "cpu", "methods": ["ce", "kd"],
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], key: value}
    spec.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    code, out, err = cli(["sweep", spec, "--results", results, "--no-progress"], capsys)
    assert code == 2 and "from 0 to 4294967295" in err and "Traceback" not in err, err
    assert "to train" not in out + err  # refused before a plan
    assert not record_files(results)


@pytest.mark.parametrize(("where", "value"), [("seeds", [2**32]), ("trial_seed", 2**32), ("trial_seed", -1)])
def test_a_seed_out_of_range_is_refused_by_tune(where, value, tmp_path, capsys):
    import yaml

    data = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64, "device": "cpu",
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["kd"], "seeds": [0],
            "tune": {"trials": 2}}
    if where == "seeds":
        data["seeds"] = value
    else:
        data["tune"][where] = value
    spec = tmp_path / "tune.yaml"
    spec.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    code, _, err = cli(["tune", spec, "--results", results, "--no-progress"], capsys)
    assert code == 2 and "from 0 to 4294967295" in err and "Traceback" not in err, err
    assert not record_files(results)
