"""Bad inputs to a run, met by a careful adversarial user (issue 28): one line and exit 2, or a result that is right.

Datasets that cannot make a classifier, seeds outside their range, hostile plugins and sizes out of bounds are one
line (``kdbench: error: ...``) with exit code 2 and nothing written; a member of a cohort sees inputs no other
member can change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import BUDGET_FLAGS, assert_one_line_error, cli, record_files, run_args, write_class_folders

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


# ---------------------------------------------------------------------------------------------------------------
# 8: a corrupt image read in a loader worker is its one line, not the worker's traceback


def test_a_corrupt_image_read_in_a_loader_worker_is_one_line(tmp_path, capsys, one_torch_thread):
    root = write_class_folders(tmp_path / "data", ("cat", "dog"))
    (root / "train" / "cat" / "img3.png").write_bytes(b"not an image")
    results = tmp_path / "results"
    code, _, err = cli(["run", "--dataset", "imagefolder", "--data-root", root, "--image-size", "8",
                        "--data-option", "workers=1", "--method", "ce", "--student", TINY_STUDENT, *BUDGET_FLAGS,
                        "--results", results], capsys)
    assert code in (1, 2), err
    assert "Traceback" not in err and "Caught DataError" not in err and "worker" not in err, err
    lines = [line for line in err.splitlines() if "img3.png" in line]
    assert lines and all("imagefolder: cannot read" in line for line in lines), err


# ---------------------------------------------------------------------------------------------------------------
# 9: a pretrained teacher out of the hub's reach is kdbench's one line, not the hub client's retries

NOISY_HUB = """
import logging
import sys

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError


def offline(repo_id, filename=None, **kwargs):
    for attempt in range(1, 12):  # what the hub client and urllib3 log while they retry without a network
        logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=%d)) after a failure", attempt)
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry %d/5].", attempt)
    raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the local cache")


huggingface_hub.hf_hub_download = offline
from kdbench.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_pretrained_teacher_offline_is_one_line_without_the_hub_clients_retries(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "offline.py"
    script.write_text(NOISY_HUB)
    results = tmp_path / "results"
    args = ["run", "--dataset", "digits", "--teacher", "resnet18", "--teacher-pretrained", "--student", TINY_STUDENT,
            "--method", "kd", *BUDGET_FLAGS, "--results", str(results)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: ") and "resnet18" in lines[0], done.stderr
    assert not record_files(results)


# ---------------------------------------------------------------------------------------------------------------
# 10: a plugin's losses() that breaks the contract is told what the contract is

LOSSES_PLUGIN = '''
"""A method whose losses() returns {returns}."""
from dataclasses import dataclass

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method


@register_method("{name}")
class Broken(Distiller):
    """Breaks the losses() contract."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        weight: float = 1.0

    def losses(self, step):
        per_sample = F.cross_entropy(step.student_logits, step.labels, reduction="none")
        return {returns}
'''


@pytest.mark.parametrize(("name", "returns", "fragment"), [
    ("floaty", "{'loss_ce': per_sample.detach().mean().item()}", "its term 'loss_ce' is a float, not a tensor"),
    ("persample", "{'loss_ce': per_sample}", "its term 'loss_ce' has shape (64,)"),
    ("bare", "per_sample.mean()", "(got Tensor)"),
])
def test_losses_that_break_the_contract_are_told_the_contract(name, returns, fragment, tmp_path, capsys,
                                                                method_sandbox, one_torch_thread):
    plugin = tmp_path / f"{name}.py"
    plugin.write_text(LOSSES_PLUGIN.format(name=name, returns=returns))
    results = tmp_path / "results"
    code, _, err = cli(run_args(results, "--method", name, "--plugin", plugin), capsys)
    assert code == 1, err
    assert "Traceback" not in err and "has no attribute" not in err and "size of tensor" not in err, err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "must return a dict of scalar tensors" in failed[0] and fragment in failed[0], err


# ---------------------------------------------------------------------------------------------------------------
# 11: a plugin file that exits on import (a script, not a plugin) is one line naming the file, exit 2

SCRIPTS = {
    "sys.exit(0)": "import sys\n\nsys.exit(0)\n",
    "argparse": ("import argparse\n\nparser = argparse.ArgumentParser()\n"
                 "parser.add_argument('--epochs', type=int, required=True)\nargs = parser.parse_args()\n"),
}


@pytest.mark.parametrize("kind", list(SCRIPTS))
def test_a_plugin_that_exits_on_import_is_one_line_naming_it(kind, tmp_path, capsys, method_sandbox):
    plugin = tmp_path / "train_script.py"
    plugin.write_text(SCRIPTS[kind])
    results = tmp_path / "results"
    code, _, err = cli(run_args(results, "--method", "ce", "--plugin", plugin), capsys)
    assert_one_line_error(code, err, "train_script.py", "exits on import")
    assert not record_files(results)


# ---------------------------------------------------------------------------------------------------------------
# 12: an image size too large to allocate is said to be too large


def test_an_image_size_too_large_is_said_to_be_too_large(tmp_path, capsys):
    results = tmp_path / "results"
    code, _, err = cli(run_args(results, "--method", "ce", "--image-size", "100000"), capsys)
    assert_one_line_error(code, err, "image size 100000 is too large", "smaller --image-size")
    assert "larger" not in err
    assert not record_files(results)


# ---------------------------------------------------------------------------------------------------------------
# 2: a member of a cohort sees inputs no other member can change

VANDAL_PLUGIN = '''
"""A method that edits the batch it is given in place, after taking its own loss."""
from dataclasses import dataclass

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method


@register_method("vandal")
class Vandal(Distiller):
    """Overwrites the shared images, labels and indices (through .data, which autograd does not see)."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        weight: float = 1.0

    def losses(self, step):
        loss = F.cross_entropy(step.student_logits, step.labels.clone())
        step.images.data.mul_(0)
        step.labels.data.fill_(0)
        step.indices.data.fill_(0)
        return {"loss_ce": loss}
'''


def test_a_member_that_edits_the_batch_in_place_changes_no_other_members_result(tmp_path, capsys, method_sandbox,
                                                                                one_torch_thread):
    import json

    from kdbench import results as store

    plugin = tmp_path / "vandal.py"
    plugin.write_text(VANDAL_PLUGIN)
    beside, alone = tmp_path / "beside", tmp_path / "alone"
    code, _, err = cli(run_args(beside, "--method", "vandal", "--method", "ce", "--plugin", plugin), capsys)
    assert code == 0, err
    code, _, err = cli(run_args(alone, "--method", "ce"), capsys)
    assert code == 0, err
    ce_beside = next(r for r in store.iter_records(beside) if r["method"] == "ce")
    ce_alone = next(r for r in store.iter_records(alone) if r["method"] == "ce")
    assert ce_beside["cohort_size"] == 2 and ce_alone["cohort_size"] == 1
    assert json.dumps(ce_beside["history"], default=str).count("loss") > 0
    keys = ("top1", "top5", "nll")
    assert {k: ce_beside[k] for k in keys} == {k: ce_alone[k] for k in keys}
    assert [{k: v for k, v in e.items() if k != "time_s"} for e in ce_beside["history"]] == \
        [{k: v for k, v in e.items() if k != "time_s"} for e in ce_alone["history"]]
