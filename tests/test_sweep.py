"""Sweep specs: validation (every problem, one line each), expansion, shipped specs, end-to-end sweeps in process."""

from __future__ import annotations

import hashlib
import itertools
import json
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli import build_parser, main
from kdbench.commands.run import build_run_specs
from kdbench.errors import ModelError
from kdbench.executors import EXECUTORS
from kdbench.executors import local as local_executor
from kdbench.results import iter_records, record_path
from kdbench.sweep import SpecError, expand_sweep, load_sweep_spec, parse_sweep_spec
from tests.conftest import TINY_STUDENT, TINY_TEACHER

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def tiny_spec(**overrides) -> dict:
    spec = {"dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64,
            "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd"], "seeds": [0]}
    spec.update(overrides)
    return spec


def sweep(args, capsys):
    code = main(["sweep", *map(str, args), "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Expansion


def test_expansion_is_pairs_x_methods_x_grid_x_seeds_with_teacher_free_runs_shared():
    spec = parse_sweep_spec(tiny_spec(
        pairs=[{"teacher": TINY_TEACHER, "student": TINY_STUDENT}, {"teacher": "resnet18", "student": TINY_STUDENT}],
        methods={"ce": {}, "kd": {"temperature": [2, 4, 8]}}, seeds=[0, 1]))
    runs = expand_sweep(spec)
    got = sorted((r.method, r.teacher or "", r.method_params.get("temperature", 0.0), r.seed) for r in runs)
    kd = [("kd", t, float(temp), s) for t, temp, s in itertools.product([TINY_TEACHER, "resnet18"], [2, 4, 8], [0, 1])]
    ce = [("ce", "", 0.0, s) for s in (0, 1)]  # one ce run per seed serves both pairs (same student and budget)
    assert got == sorted(kd + ce)
    assert len({r.run_id for r in runs}) == len(runs) == 14
    assert all(r.epochs == 1 and r.batch_size == 64 for r in runs)
    assert {(r.method, r.teacher_epochs) for r in runs} == {("ce", 0), ("kd", 1)}  # ce trains no teacher


def test_a_spec_and_the_same_kdbench_run_command_give_the_same_run_ids():
    args = build_parser().parse_args([
        "run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "ce",
        "--method", "kd", "--seeds", "0", "1", "--epochs", "1", "--teacher-epochs", "1", "--set", "kd.temperature=2",
        "--val-fraction", "0.2", "--milestones", "1", "--schedule", "multistep"])
    from_run = {s.run_id for s in build_run_specs(args)}
    spec = {"dataset": "digits", "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}],
            "methods": {"ce": None, "kd": {"temperature": 2}}, "seeds": [0, 1], "epochs": 1, "teacher_epochs": 1,
            "val_fraction": 0.2, "milestones": 1, "schedule": "multistep"}  # batch size: kdbench run's default
    assert {s.run_id for s in expand_sweep(parse_sweep_spec(spec))} == from_run
    assert len(from_run) == 4


def test_top_level_teacher_and_student_are_a_one_pair_shorthand():
    data = {k: v for k, v in tiny_spec().items() if k != "pairs"} | {"teacher": TINY_TEACHER, "student": TINY_STUDENT}
    short = parse_sweep_spec(data)
    assert {s.run_id for s in expand_sweep(short)} == {s.run_id for s in expand_sweep(parse_sweep_spec(tiny_spec()))}


def test_a_pair_overrides_budget_keys_for_its_runs_only():
    spec = parse_sweep_spec(tiny_spec(
        lr=0.05, pairs=[{"teacher": TINY_TEACHER, "student": TINY_STUDENT},
                        {"teacher": "resnet18", "student": TINY_STUDENT, "lr": 0.01, "epochs": 2}]))
    runs = expand_sweep(spec)
    by_teacher = {(r.method, r.teacher, r.lr, r.epochs) for r in runs}
    # the pairs' ce runs differ in budget, so each pair has its own
    assert by_teacher == {("ce", None, 0.05, 1), ("kd", TINY_TEACHER, 0.05, 1), ("ce", None, 0.01, 2),
                          ("kd", "resnet18", 0.01, 2)}


def test_methods_as_a_list_may_repeat_a_method_with_different_settings():
    spec = parse_sweep_spec(tiny_spec(methods=["ce", {"kd": {"temperature": 2, "kd_weight": 0.5}},
                                               {"kd": {"temperature": [4]}}]))
    kd = sorted((r.method_params["temperature"], r.method_params["kd_weight"]) for r in expand_sweep(spec)
                if r.method == "kd")
    assert kd == [(2.0, 0.5), (4.0, 0.9)]


def test_a_list_valued_parameter_takes_one_list_as_one_value(method_sandbox):
    from dataclasses import dataclass

    from kdbench.distiller import Distiller, register_method

    @register_method("stagy")
    class Stagy(Distiller):
        """A test method with a list-valued parameter."""

        @dataclass(frozen=True)
        class Params:
            stages: tuple[int, ...] = (1,)

        def losses(self, step):
            return {}

    one = expand_sweep(parse_sweep_spec(tiny_spec(methods={"stagy": {"stages": [1, 2]}})))
    two = expand_sweep(parse_sweep_spec(tiny_spec(methods={"stagy": {"stages": [[1], [1, 2]]}})))
    assert [r.method_params["stages"] for r in one] == [[1, 2]]
    assert sorted(r.method_params["stages"] for r in two) == [[1], [1, 2]]


# ---------------------------------------------------------------------------------------------------------------
# Validation


BAD_SPEC = f"""\
dataset: digitz
epoch: 1
teacher_epochs: one
lr: -1
pairs:
  - {{teacher: test_resnett, student: {TINY_STUDENT}, lr: fast, teachr: x}}
  - {{student: {TINY_STUDENT}, teacher: {TINY_TEACHER}, teacher_ckpt: missing.pt}}
methods: {{kdd: {{}}, kd: {{temperature: [2, warm], temprature: 3}}}}
seeds: [0, 0]
max_cohort: 0
"""

EXPECTED_PROBLEMS = [
    "unknown key 'epoch'; did you mean 'epochs'?",
    "unknown dataset 'digitz'; did you mean 'digits'?",
    "teacher_epochs must be an integer (got 'one')",
    "lr must be > 0 (got -1.0)",
    "pairs[0]: unknown key 'teachr'; did you mean 'teacher'?",
    "pairs[0].teacher: unknown model 'test_resnett'",
    "pairs[0].lr must be a number (got 'fast')",
    "pairs[1].teacher_ckpt: teacher checkpoint not found: ",  # the path as resolved, from the spec's folder
    "unknown method 'kdd'; did you mean 'kd'",
    "kd.temperature must be a number (got 'warm')",
    "method 'kd' has no parameter 'temprature'; did you mean 'temperature'?",
    "seeds lists a seed twice: [0, 0]",
    "max_cohort must be >= 1 (got 0)",
]


def test_every_problem_of_a_spec_is_one_line_and_nothing_is_written(tmp_path, capsys):
    path = write_spec(tmp_path, BAD_SPEC, "bad.yaml")
    results = tmp_path / "results"
    code, out, err = sweep([path, "--results", results], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert all(line.startswith(f"kdbench: error: {path}: ") for line in lines), err
    for problem in EXPECTED_PROBLEMS:
        assert sum(problem in line for line in lines) == 1, (problem, err)
    assert len(lines) == len(EXPECTED_PROBLEMS), err
    assert f"teacher checkpoint not found: {(tmp_path / 'missing.pt').resolve()}" in err
    assert not results.exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("dataset: digits\npairs: [\n", "not valid YAML (line 3, column 1)"),
        ("", "the spec is empty"),
        ("- dataset: digits\n", "a sweep spec is a mapping"),
        ("dataset: digits\nmethods: [ce]\n", "missing key 'pairs'"),
        (f"dataset: digits\npairs: [{{teacher: {TINY_TEACHER}, student: {TINY_STUDENT}}}]\n", "missing key 'methods'"),
        (f"pairs: [{{teacher: {TINY_TEACHER}, student: {TINY_STUDENT}}}]\nmethods: [ce]\n", "missing key 'dataset'"),
        (f"dataset: digits\npairs: [{{teacher: {TINY_TEACHER}}}]\nmethods: [ce]\n", "pairs[0]: missing key 'student'"),
        (f"dataset: digits\npairs: [{TINY_STUDENT}]\nmethods: [ce]\n", "pairs[0] must be a mapping"),
        (f"dataset: digits\npairs: [{{student: {TINY_STUDENT}}}]\nmethods: [kd]\n", "method 'kd' needs a teacher"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: {{kd: {{temperature: [-1]}}}}\nteacher: {TINY_TEACHER}\n",
         "temperature must be > 0"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: [ce]\nschedule: step\n", "schedule must be one of"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: [ce]\nseeds: []\n", "at least one seed"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: [ce]\namp: maybe\n", "amp must be true or false"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: [ce]\nplugins: [nowhere.py]\n", "plugin file not found"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: 3\n", "methods must be a list"),
        (f"dataset: digits\nstudent: {TINY_STUDENT}\nmethods: [ce]\ndata_options: 3\n",
         "data_options must be a mapping"),
    ],
)
def test_each_kind_of_problem_is_named(tmp_path, capsys, text, problem):
    path = write_spec(tmp_path, text)
    code, _, err = sweep([path, "--results", tmp_path / "results"], capsys)
    assert code == 2
    assert problem in err and err.startswith(f"kdbench: error: {path}: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_pair_sets_method_parameters_for_its_own_runs():
    """DKD's configs set beta per pair: a pair's method_params override the spec's value for that pair only."""
    spec = parse_sweep_spec(tiny_spec(
        pairs=[{"teacher": TINY_TEACHER, "student": TINY_STUDENT, "method_params": {"kd": {"temperature": 2}}},
               {"teacher": TINY_TEACHER, "student": "test_convnext", "image_size": 32}],
        methods={"kd": {"temperature": [4, 8]}, "ce": None}))
    temperatures = {(run.student, run.method_params["temperature"]) for run in expand_sweep(spec)
                    if run.method == "kd"}
    assert temperatures == {(TINY_STUDENT, 2.0), ("test_convnext", 4.0), ("test_convnext", 8.0)}
    plain = {run.run_id for run in expand_sweep(parse_sweep_spec(tiny_spec(
        methods={"kd": {"temperature": 2}, "ce": None}))) if run.student == TINY_STUDENT}
    assert plain <= {run.run_id for run in expand_sweep(spec)}  # the same runs as the spec-wide value gives


@pytest.mark.parametrize(("method_params", "message"), [
    ({"dkd": {"beta": 2}}, "method_params names 'dkd', which is not among the sweep's methods"),
    ({"kd": {"temperature": [2, 4]}}, "a pair sets one value per parameter (temperature has several)"),
    ({"kd": {"temprature": 2}}, "temprature"),
    ([1, 2], "method_params must map method names"),
])
def test_bad_pair_method_params_are_spec_problems(method_params, message):
    pairs = [{"teacher": TINY_TEACHER, "student": TINY_STUDENT, "method_params": method_params}]
    with pytest.raises(SpecError) as caught:
        expand_sweep(parse_sweep_spec(tiny_spec(pairs=pairs)))
    assert any(message in line for line in caught.value.lines), caught.value.lines


def test_spec_error_keeps_every_problem_for_library_callers():
    with pytest.raises(SpecError) as caught:
        parse_sweep_spec({"dataset": "digits", "methods": ["kdd"], "epochs": "x"}, source="mine")
    assert len(caught.value.problems) == 3  # epochs, methods, pairs
    assert all(line.startswith("mine: ") for line in caught.value.lines)
    assert "(and 2 more problems)" in str(caught.value)


def test_a_truncated_teacher_checkpoint_is_one_clear_line(tmp_path, capsys):
    ckpt = tmp_path / "teacher.pt"
    torch.save({"weight": torch.zeros(3, 3)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:40])
    path = write_spec(tmp_path, f"""\
        dataset: digits
        pairs: [{{teacher: {TINY_TEACHER}, student: {TINY_STUDENT}, teacher_ckpt: teacher.pt}}]
        methods: [kd]
        """)
    code, _, err = sweep([path, "--results", tmp_path / "results"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pairs[0].teacher_ckpt: cannot read checkpoint" in err and str(ckpt) in err
    assert not (tmp_path / "results").exists()


def test_a_pair_that_cannot_process_the_input_is_a_spec_problem_before_any_run(tmp_path, capsys):
    path = write_spec(tmp_path, f"""\
        dataset: digits
        pairs:
          - {{teacher: {TINY_TEACHER}, student: test_convnext}}
          - {{teacher: test_convnext, student: {TINY_STUDENT}, image_size: 32}}
          - {{teacher: test_convnext, student: {TINY_STUDENT}}}
        methods: [ce, kd]
        """)
    for extra in (["--dry-run"], []):
        code, out, err = sweep([path, "--results", tmp_path / "results", *extra], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and out == "", err
        assert len(lines) == 2, err  # pairs[0]'s student and pairs[2]'s teacher; pairs[1] is resized to 32x32
        cannot = "model 'test_convnext' cannot process 8x8 inputs"
        assert f"pairs[0] ({TINY_TEACHER} -> test_convnext): student {cannot}" in lines[0]
        assert f"pairs[2] (test_convnext -> {TINY_STUDENT}): teacher {cannot}" in lines[1]
        assert not (tmp_path / "results").exists()
    # a teacher no method uses is not checked
    only_ce = write_spec(tmp_path, f"dataset: digits\npairs: [{{teacher: test_convnext, student: {TINY_STUDENT}}}]\n"
                                   "methods: [ce]\n", "ce.yaml")
    code, _, err = sweep([only_ce, "--results", tmp_path / "results", "--dry-run"], capsys)
    assert code == 0, err


def test_unknown_executor_and_missing_spec_are_rejected(tmp_path, capsys):
    assert EXECUTORS.names() == ["local", "ray", "slurm"]
    assert main(["sweep", "x.yaml", "--executor", "pbs"]) == 2
    assert "invalid choice: 'pbs'" in capsys.readouterr().err
    code, _, err = sweep([tmp_path / "absent.yaml"], capsys)
    assert code == 2 and "sweep spec not found" in err


# ---------------------------------------------------------------------------------------------------------------
# Shipped specs


def shipped_specs() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def test_the_shipped_specs_are_packaged_unchanged_and_listed(capsys):
    names = [p.name for p in shipped_specs()]
    assert names == ["cifar100_crd.yaml", "imagenet100_kd.yaml", "imagenet_kd.yaml", "quickstart.yaml",
                     "tune_mnist5k.yaml"]
    packaged = resources.files("kdbench").joinpath("resources", "configs")
    for path in shipped_specs():
        assert packaged.joinpath(path.name).read_bytes() == path.read_bytes(), path.name
    assert main(["sweep", "--list-configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [name.removesuffix(".yaml") for name in names]


@pytest.mark.parametrize("name", ["quickstart.yaml", "cifar100_crd.yaml", "tune_mnist5k.yaml"])
def test_the_shipped_specs_are_valid(name):
    spec = load_sweep_spec(CONFIGS / name)
    assert expand_sweep(spec)
    assert load_sweep_spec(name.removesuffix(".yaml")).methods == spec.methods  # found by name too


def test_the_cifar100_spec_is_the_published_protocol():
    from kdbench.published import load_published, zoo_name

    raw = yaml.safe_load((CONFIGS / "cifar100_crd.yaml").read_text())
    spec = load_sweep_spec(CONFIGS / "cifar100_crd.yaml")
    published = load_published("cifar100")
    published = published[published["method"] == "teacher"]  # the CRD tables' pairs (others come from later papers)
    pairs = {(zoo_name(t), zoo_name(s)) for t, s in zip(published["teacher"], published["student"], strict=True)}
    assert {(p.teacher, p.student) for p in spec.pairs} == pairs
    assert len(spec.pairs) == len(raw["pairs"]) == 13
    low_lr = {"cifar_mobilenetv2", "cifar_shufflenetv1", "cifar_shufflenetv2"}
    for pair in spec.pairs:
        assert spec.pair_budget(pair)["lr"] == (0.01 if pair.student in low_lr else 0.05), pair
    budget = spec.budget
    assert (budget["epochs"], budget["teacher_epochs"], budget["batch_size"]) == (240, 240, 64)
    assert (budget["momentum"], budget["weight_decay"], budget["schedule"]) == (0.9, 5e-4, "multistep")
    assert (tuple(budget["milestones"]), budget["lr_decay"], budget["val_fraction"]) == ((150, 180, 210), 0.1, 0.0)
    assert spec.dataset == "cifar100"


def test_the_quickstart_spec_shares_its_runs_with_kdbench_run():
    spec = load_sweep_spec(CONFIGS / "quickstart.yaml")
    from_run = {s.run_id: s.seed for s in build_run_specs(build_parser().parse_args(["run"]))}
    from_sweep = {r.run_id for r in expand_sweep(spec) if r.seed in set(from_run.values())}
    assert from_sweep == set(from_run)


# ---------------------------------------------------------------------------------------------------------------
# End to end, in process


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing_then_reports_what_is_done(tmp_path, capsys):
    path = write_spec(tmp_path, yaml.safe_dump(tiny_spec(seeds=[0, 1])))
    results = tmp_path / "results"
    code, out, _ = sweep([path, "--results", results, "--dry-run"], capsys)
    assert code == 0 and not results.exists()
    assert "4 runs: 4 to train in 2 cohorts, 0 already done" in out
    assert "1 to train, 0 cached" in out and f"to train   {TINY_TEACHER} on digits" in out
    assert out.count("cohort ") == 4

    code, out, err = sweep([path, "--results", results], capsys)
    assert code == 0, err
    assert "4 of 4 runs ok" in err and "kd" in out  # the leaderboard
    code, out, _ = sweep([path, "--results", results, "--dry-run"], capsys)
    assert "0 to train in 0 cohorts, 4 already done" in out and "0 to train, 1 cached" in out
    assert sum(line.strip().startswith("done ") for line in out.splitlines()) == 4


@pytest.mark.slow
def test_teachers_train_once_are_shared_and_their_hash_is_recorded(tmp_path, capsys):
    teachers = tmp_path / "teachers"
    path = write_spec(tmp_path, yaml.safe_dump(tiny_spec(methods=["kd"], seeds=[0, 1])))
    code, _, err = sweep([path, "--results", tmp_path / "a", "--teacher-cache", teachers], capsys)
    assert code == 0, err
    (weights,) = teachers.glob("*.pt")
    records = list(iter_records(tmp_path / "a"))
    assert len(records) == 2 and {r["cohort_id"] for r in records} == {r["run_id"] for r in records}  # two cohorts
    assert {r["teacher_sha256"] for r in records} == {sha256(weights)}
    trained_at = weights.stat().st_mtime_ns

    # a second store with the same teacher cache trains no teacher
    code, _, err = sweep([path, "--results", tmp_path / "b", "--teacher-cache", teachers], capsys)
    assert code == 0, err
    assert weights.stat().st_mtime_ns == trained_at and len(list(teachers.glob("*.pt"))) == 1
    assert {r["teacher_sha256"] for r in iter_records(tmp_path / "b")} == {sha256(weights)}

    # a truncated cached teacher is detected and trained again
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    more = write_spec(tmp_path, yaml.safe_dump(tiny_spec(methods=["kd"], seeds=[0, 1, 2])), "more.yaml")
    code, _, err = sweep([more, "--results", tmp_path / "a", "--teacher-cache", teachers], capsys)
    assert code == 0, err
    assert "corrupt" in err and "retraining" in err
    new = [r for r in iter_records(tmp_path / "a") if r["seed"] == 2]
    assert len(new) == 1 and new[0]["teacher_sha256"] == sha256(weights)
    assert json.loads(next(teachers.glob("*.json")).read_text())["sha256"] == sha256(weights)


@pytest.mark.slow
def test_a_teacher_checkpoint_relative_to_the_spec_is_loaded_and_hashed(tmp_path, capsys):
    from kdbench.models import create_model

    folder = tmp_path / "specs"
    folder.mkdir()
    model = create_model(TINY_TEACHER, num_classes=10, in_chans=1, image_size=8)
    torch.save(model.state_dict(), folder / "teacher.pt")
    pair = {"teacher": TINY_TEACHER, "student": TINY_STUDENT, "teacher_ckpt": "teacher.pt"}
    path = write_spec(folder, yaml.safe_dump(tiny_spec(methods=["kd"], pairs=[pair])))
    code, _, err = sweep([path, "--results", tmp_path / "results"], capsys)
    assert code == 0, err
    (record,) = iter_records(tmp_path / "results")
    assert record["teacher_source"] == "checkpoint"
    assert record["teacher_ckpt_sha256"] == record["teacher_sha256"] == sha256(folder / "teacher.pt")
    assert not (tmp_path / "results" / "teachers").exists()  # nothing trained


@pytest.mark.slow
def test_a_failing_teacher_is_tried_once_and_the_other_pairs_still_run(tmp_path, capsys, monkeypatch):
    # A teacher that cannot process the input is a spec problem now (reported before anything runs), so the
    # failure comes from the teacher's training instead.
    real = local_executor.prepare_teacher

    def failing(spec, *args, **kwargs):
        if spec.teacher == TINY_STUDENT:
            raise ModelError("the teacher ran out of memory")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(local_executor, "prepare_teacher", failing)
    pairs = [{"teacher": TINY_STUDENT, "student": TINY_STUDENT}, {"teacher": TINY_TEACHER, "student": TINY_STUDENT}]
    path = write_spec(tmp_path, yaml.safe_dump(tiny_spec(methods=["kd"], seeds=[0, 1], pairs=pairs)))
    code, _, err = sweep([path, "--results", tmp_path / "results"], capsys)
    assert code == 1
    assert err.count(f"FAILED teacher {TINY_STUDENT}") == 1 and "ran out of memory" in err
    assert err.count("its teacher failed") == 1  # the second seed's cohort is not tried again
    records = list(iter_records(tmp_path / "results"))
    assert sorted((r["teacher"], r["seed"], r["status"]) for r in records) == [(TINY_TEACHER, 0, "ok"),
                                                                                 (TINY_TEACHER, 1, "ok")]
    assert "2 of 4 runs ok" in err and "2 not finished" in err


FLAKY_PLUGIN = '''\
"""A test method: cross-entropy that fails while a flag file exists."""
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method

FLAG = Path({flag!r})


@register_method("flaky")
class Flaky(Distiller):
    """Fails while the flag file exists."""

    needs_teacher = False

    @dataclass(frozen=True)
    class Params:
        """None."""

    def losses(self, step):
        """Cross-entropy, or an error."""
        if FLAG.exists():
            raise RuntimeError("flag file present")
        return {{"loss_ce": F.cross_entropy(step.student_logits, step.labels)}}
'''


@pytest.mark.slow
def test_failed_runs_are_kept_until_retry_failed(tmp_path, capsys, method_sandbox):
    flag = tmp_path / "fail-now"
    flag.touch()
    (tmp_path / "flaky.py").write_text(FLAKY_PLUGIN.format(flag=str(flag)))
    path = write_spec(tmp_path, yaml.safe_dump(tiny_spec(methods=["ce", "flaky"], plugins=["flaky.py"])))
    results = tmp_path / "results"
    code, _, err = sweep([path, "--results", results], capsys)
    statuses = {r["method"]: r["status"] for r in iter_records(results)}
    assert code == 1 and statuses == {"ce": "ok", "flaky": "failed"}, err
    assert "flag file present" in err and "--retry-failed" in err
    failed_id = next(r["run_id"] for r in iter_records(results) if r["method"] == "flaky")
    stamp = record_path(results, failed_id).stat().st_mtime_ns

    flag.unlink()
    code, _, err = sweep([path, "--results", results], capsys)
    assert code == 1 and "0 to train" in err
    assert record_path(results, failed_id).stat().st_mtime_ns == stamp

    code, _, err = sweep([path, "--results", results, "--retry-failed"], capsys)
    assert code == 0, err
    assert {r["method"]: r["status"] for r in iter_records(results)} == {"ce": "ok", "flaky": "ok"}
