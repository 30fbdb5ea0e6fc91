"""The `kdbench` command: errors are one line with exit code 2 and write nothing; runs end to end and resume."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import textwrap

import pytest

from kdbench.cli import main


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--method", "kdd"], ["unknown method 'kdd'", "'kd'"]),
        (["--dataset", "digitz"], ["unknown dataset 'digitz'", "'digits'"]),
        (["--student", "resnet81"], ["unknown model 'resnet81'", "'resnet18'"]),
        (["--teacher", "not_a_model_at_all"], ["unknown model 'not_a_model_at_all'"]),
        (["--method", "kd", "--set", "kd.temperature=warm"], ["kd.temperature must be a number"]),
        (["--method", "kd", "--set", "kd.temprature=2"], ["no parameter 'temprature'", "'temperature'"]),
        (["--method", "kd", "--set", "kd=2"], ["METHOD.PARAM=VALUE"]),
        (["--method", "kd", "--set", "ce.label_smoothing=0.1"], ["not among the methods run"]),
        (["--epochs", "0"], ["epochs must be > 0"]),
        (["--epochs", "-3"], ["epochs must be > 0"]),
        (["--teacher-epochs", "0", "--method", "kd"], ["teacher epochs must be > 0"]),
        (["--seeds", "0", "0"], ["lists a seed twice"]),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
         ["device"]),
        (["--teacher-ckpt", "/nonexistent/t.pt", "--method", "kd"], ["teacher checkpoint not found"]),
        (["--epochs", "two"], ["invalid int value"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_run_args, results, capsys, extra, fragments):
    code, out, err = run_cli(tiny_run_args + extra, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not results.exists()


def test_missing_data_root_is_one_line(tiny_run_args, results, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    args = [a if a != "digits" else "cifar10" for a in tiny_run_args]
    code, _, err = run_cli(args + ["--data-root", str(tmp_path / "no_data")], capsys)
    assert_one_line_error(code, err, "--data-root")
    assert not results.exists()


def test_plugin_that_fails_to_import_is_one_line(tiny_run_args, results, capsys, tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import this_module_does_not_exist\n")
    code, _, err = run_cli(tiny_run_args + ["--plugin", str(plugin)], capsys)
    assert_one_line_error(code, err, "cannot import plugin", "line 1", "this_module_does_not_exist")
    missing = tmp_path / "missing.py"
    code, _, err = run_cli(tiny_run_args + ["--plugin", str(missing)], capsys)
    assert_one_line_error(code, err, "plugin file not found")
    assert not results.exists()


PLUGIN = textwrap.dedent('''
    """A plugin method written in one file, as the README shows."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    from kdbench.distiller import Distiller, register_method


    @register_method("soft_ce")
    class SoftCE(Distiller):
        """Cross-entropy with the teacher's argmax as the label (a toy method for the test)."""

        @dataclass(frozen=True)
        class Params:
            weight: float = 1.0

        def losses(self, step):
            hard = step.teacher_logits.argmax(1)
            return {"loss_ce": F.cross_entropy(step.student_logits, step.labels),
                    "loss_teacher_label": self.params.weight * F.cross_entropy(step.student_logits, hard)}
''')


@pytest.mark.slow
def test_run_end_to_end_with_a_plugin_then_resume(tiny_run_args, results, capsys, tmp_path, method_sandbox):
    plugin = tmp_path / "soft_ce.py"
    plugin.write_text(PLUGIN)
    args = tiny_run_args + ["--method", "ce", "--method", "kd", "--method", "soft_ce", "--plugin", str(plugin),
                            "--set", "soft_ce.weight=0.5", "--seeds", "0", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "6 runs: 6 to train, 0 already done" in err
    for name in ("ce", "kd", "soft_ce(weight=0.5)"):
        assert name in out
    assert "Δ" in out or "delta" in out.lower()
    from kdbench.results import load

    frame = load(results)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"}
    assert set(frame["method"]) == {"ce", "kd", "soft_ce"}
    assert frame["gmacs"].notna().all() and frame["cpu_latency_ms_bs1"].notna().all()
    kd = frame[frame["method"] == "kd"]
    assert (kd["teacher_gmacs"] > kd["gmacs"]).all() and (kd["teacher_params_m"] > 0).all()
    assert frame.loc[frame["method"] == "ce", "teacher_gmacs"].isna().all()
    # resume: the same command trains nothing
    code, out2, err2 = run_cli(args, capsys)
    assert code == 0
    assert "6 runs: 0 to train, 6 already done" in err2
    assert "done " not in err2


def test_list_commands(capsys):
    code, out, _ = run_cli(["list", "methods"], capsys)
    assert code == 0 and "ce" in out and "kd" in out
    code, out, _ = run_cli(["list", "methods", "k*"], capsys)
    assert out.split()[0] == "kd"
    code, out, _ = run_cli(["list", "datasets"], capsys)
    assert {"digits", "mnist5k", "cifar10", "cifar100", "imagefolder", "synthetic"} <= {
        line.split()[0] for line in out.splitlines()}
    code, out, _ = run_cli(["list", "models", "cifar_resnet8*"], capsys)
    assert out.split() == ["cifar_resnet8", "cifar_resnet8x4"]


def test_the_console_script_is_declared_as_the_cli_entry_point():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="kdbench")
    assert script.value == "kdbench.cli:main" and script.load() is main


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["console script", "python -m kdbench"])
def test_both_entry_points_run_the_command(entry):
    if entry == "console script":
        exe = shutil.which("kdbench")
        assert exe is not None, "the kdbench console script is not installed (pip install -e .)"
        cmd = [exe]
    else:
        cmd = [sys.executable, "-m", "kdbench"]
    done = subprocess.run(cmd + ["list", "methods", "kd"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("kd")
    bad = subprocess.run(cmd + ["run", "--method", "nope"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "unknown method 'nope'" in bad.stderr
