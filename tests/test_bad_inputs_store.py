"""Bad inputs and faults in a results store and its reports (issue 28): nothing on screen may be silently wrong.

A leaderboard never pools runs of different code versions and never counts a seed twice; a record is reused only
when its own fields are those of the run that asks for it; a record a report cannot compute with is left out with
one line; report and bench outputs that cannot be written are one line; a run trained by another process is named.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pandas as pd
import pytest

from kdbench import results as store
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.helpers import METHOD_FLAGS, assert_one_line_error, cli, kd_record, record_files, run_args


def _add_copy(results: Path, source: Path, run_id: str, **changes: object) -> dict:
    """A second record beside ``source``: the same run under another id, with ``changes``."""
    record = {**json.loads(source.read_text()), **changes, "run_id": run_id}
    store.write_record(results, record)
    return record


def _leaderboard_csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "leaderboard.csv")


# ---------------------------------------------------------------------------------------------------------------
# 1: runs of different versions are never pooled, a seed is never counted twice


@pytest.mark.parametrize(("field", "old"), [("method_version", 0), ("protocol_version", 1)])
def test_a_leaderboard_never_pools_versions_nor_counts_a_seed_twice(field, old, copied_store, tmp_path, capsys):
    kd = kd_record(copied_store)
    current = json.loads(kd.read_text())
    _add_copy(copied_store, kd, f"digits-kd-old{field[:6]}", **{field: old, "top1": current["top1"] / 4 + 1})
    out = tmp_path / "reports"
    code, stdout, err = cli(["report", "--results", copied_store, "--out", out, "--format", "csv"], capsys)
    assert code == 0, err
    board = _leaderboard_csv(out)
    kd_rows = board[board["method"] == "kd"]
    assert kd_rows["n"].tolist() == [1]  # seed 0 once: the older version is left out
    assert kd_rows["top1_mean"].iloc[0] == pytest.approx(current["top1"], abs=1e-3)
    left_out = [line for line in err.splitlines() if "left out 1 run" in line]
    assert len(left_out) == 1 and f"version {old}" in left_out[0] and "never pooled" in left_out[0], err
    assert "(2)" not in stdout  # the console leaderboard counts one kd seed


def test_a_seed_repeated_under_one_variant_counts_once():
    from kdbench.report.aggregate import leaderboard

    base = {"status": "ok", "dataset": "digits", "student": TINY_STUDENT, "seed": 0, "method_params": {},
            "epochs": 1, "history": [], "method_version": 1, "protocol_version": 2}
    rows = [{**base, "run_id": "ce0", "method": "ce", "top1": 50.0},
            {**base, "run_id": "kd0a", "method": "kd", "teacher": TINY_TEACHER, "teacher_seed": 0, "top1": 60.0},
            {**base, "run_id": "kd0b", "method": "kd", "teacher": TINY_TEACHER, "teacher_seed": 1, "top1": 64.0}]
    board = leaderboard(store.records_frame(rows))
    kd = board[board["method"] == "kd"].iloc[0]
    assert kd["n"] == 1 and kd["top1_mean"] == pytest.approx(62.0) and kd["n_paired"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 7: a record is reused only when its own fields are those of the run that asks for it


@pytest.mark.parametrize(("field", "value"), [("method_version", 0), ("lr", 0.5), ("seed", 7)])
def test_an_edited_record_is_not_trusted_by_its_file_name(field, value, copied_store, capsys):
    path = kd_record(copied_store)
    record = json.loads(path.read_text())
    tampered = json.dumps({**record, field: value, "top1": 99.9})
    path.write_text(tampered)
    code, out, err = cli(run_args(copied_store, *METHOD_FLAGS), capsys)
    assert code == 0, err
    assert "2 runs: 1 to train, 1 already done" in err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and path.name in warnings[0] and f"its {field} is" in warnings[0], err
    (moved,) = (copied_store / "corrupt").iterdir()
    assert moved.read_text() == tampered  # kept aside, as a corrupt record
    again = json.loads(path.read_text())
    assert again[field] == record[field] and again["top1"] != 99.9  # trained again under the run's own spec


def test_a_record_written_with_other_loader_options_is_still_the_same_run(copied_store, capsys):
    path = kd_record(copied_store)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "data_options": {"workers": 3}}))  # how fast it loaded, not what
    code, _, err = cli(run_args(copied_store, *METHOD_FLAGS), capsys)
    assert code == 0 and "0 to train, 2 already done" in err and "warning" not in err, err


# ---------------------------------------------------------------------------------------------------------------
# 8: a record with a string where a number belongs is left out of a report with one line; outputs that cannot be
# written are one line


@pytest.mark.parametrize("field", ["weight_decay", "val_fraction", "method_version", "protocol_version", "momentum"])
def test_a_record_with_a_string_for_a_number_is_left_out_of_the_report(field, copied_store, tmp_path, capsys):
    path = kd_record(copied_store)
    path.write_text(json.dumps({**json.loads(path.read_text()), field: "abc"}))
    out = tmp_path / "reports"
    code, _, err = cli(["report", "--results", copied_store, "--out", out, "--format", "csv,md"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"its {field} is a string, not" in warnings[0], err
    assert set(_leaderboard_csv(out)["method"]) == {"ce"}


def test_report_into_a_file_is_one_line(copied_store, tmp_path, capsys):
    target = tmp_path / "reports"
    target.write_text("not a folder\n")
    code, _, err = cli(["report", "--results", copied_store, "--out", target, "--format", "csv"], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    assert target.read_text() == "not a folder\n"
    code, _, err = cli(["report", "--results", copied_store, "--out", target / "inside", "--format", "csv"], capsys)
    assert_one_line_error(code, err, "cannot write")


def test_bench_output_onto_a_folder_is_one_line_before_measuring(tmp_path, capsys, monkeypatch):
    import kdbench.commands.bench as bench

    def never(*args, **kwargs):
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(bench, "cpu_benchmark", never)
    (tmp_path / "out.csv").mkdir()
    code, _, err = cli(["bench", TINY_STUDENT, "--input-size", "8", "--out", tmp_path / "out.csv"], capsys)
    assert_one_line_error(code, err, "is a folder")


# ---------------------------------------------------------------------------------------------------------------
# 13: runs being trained by another process are named, not silently missing from the leaderboard


def test_runs_claimed_by_another_process_are_named_after_the_leaderboard(tmp_path, capsys, one_torch_thread):
    from kdbench.plan import make_spec

    results = tmp_path / "results"
    budget = {"epochs": 1, "batch_size": 64}
    taken = make_spec(dataset="digits", student=TINY_STUDENT, method="ce", teacher=TINY_TEACHER, seed=1,
                      teacher_epochs=1, **budget)
    (results / "claims").mkdir(parents=True)
    with (results / "claims" / f"{taken.run_id}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another process" trains seed 1
        code, out, err = cli(run_args(results, "--method", "ce", "--seeds", "0", "1"), capsys)
    assert code == 0, err
    assert {r["seed"] for r in store.iter_records(results)} == {0}
    assert "1 of 2 runs" in err and "another process" in err and "kdbench report" in err, err
    assert not record_files(results).get(f"{taken.run_id}.json")
