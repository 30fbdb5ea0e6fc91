"""kdbench report marks which teacher a row was distilled from: one kdbench trained, or a checkpoint it loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kdbench.report import console_leaderboard, leaderboard, published_comparison, write_report
from kdbench.report.aggregate import pair_labels
from kdbench.report.tables import crd_tables, leaderboard_display, published_display, to_latex, to_markdown
from kdbench.results import load, write_record
from tests.helpers import P1, make_record

AUTHORS_SHA = "ab12cd34ef56" + "0" * 52  # the SHA-256 of an authors' released teacher file, as the record holds it
OTHER_SHA = "9f8e7d6c5b4a" + "1" * 52


def _kd(run_id: str, seed: int, top1: float, **fields: Any) -> dict[str, Any]:
    base = dict(teacher=P1[0], student=P1[1], method="kd", method_label="kd", teacher_source="trained",
                teacher_ckpt_sha256=None, teacher_epochs=240, teacher_seed=0, teacher_top1=79.0, agreement=80.0,
                seed=seed, top1=top1)
    return make_record(run_id, **(base | fields))


def _authors(run_id: str, seed: int, top1: float, sha: str = AUTHORS_SHA) -> dict[str, Any]:
    return _kd(run_id, seed, top1, teacher_source="checkpoint", teacher_ckpt_sha256=sha, teacher_top1=79.42,
               teacher_ckpt=f"/ckpt/{sha[:4]}.pth")


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """ce, kd from kdbench's teacher (one record written before records named their teacher's source) and kd from
    the authors' released teacher, on one pair."""
    store = tmp_path / "results"
    for seed in (0, 1):
        write_record(store, make_record(f"ce{seed}", seed=seed, top1=70.0 + seed))
        write_record(store, _authors(f"ckpt{seed}", seed, 74.0 + seed))
    write_record(store, _kd("kd0", 0, 71.0))
    legacy = _kd("kd1", 1, 72.0)
    del legacy["teacher_source"], legacy["teacher_ckpt_sha256"]
    write_record(store, legacy)
    return store


def _kd_rows(board: pd.DataFrame) -> pd.DataFrame:
    return board[board["method_label"] == "kd"].set_index("teacher_origin")


def test_rows_from_different_teachers_are_never_pooled(mixed: Path) -> None:
    board = leaderboard(load(mixed))
    kd = _kd_rows(board)
    assert sorted(kd.index) == ["checkpoint", "trained"]
    assert kd.loc["trained", "n"] == 2 and kd.loc["trained", "top1_mean"] == pytest.approx(71.5)  # legacy pooled in
    assert kd.loc["checkpoint", "n"] == 2 and kd.loc["checkpoint", "top1_mean"] == pytest.approx(74.5)
    assert kd.loc["checkpoint", "teacher_ckpt_sha256"] == AUTHORS_SHA
    assert pd.isna(kd.loc["trained", "teacher_ckpt_sha256"])
    assert kd.loc["trained", "teacher_top1"] == pytest.approx(79.0)  # each pair its own teacher's accuracy
    assert kd.loc["checkpoint", "teacher_top1"] == pytest.approx(79.42)
    # one ce run serves both pairs: the gains are paired with it in each
    assert kd.loc["trained", "delta_top1"] == pytest.approx(1.0) and kd.loc["checkpoint", "delta_top1"] == \
        pytest.approx(4.0)
    ce = board[board["method_label"] == "ce"]
    assert len(ce) == 2 and set(ce["teacher_origin"]) == {"trained", "checkpoint"}
    assert set(pair_labels(board).values()) == {f"{P1[0]} → {P1[1]} [teacher trained by kdbench]",
                                                f"{P1[0]}† → {P1[1]} [teacher checkpoint {AUTHORS_SHA[:12]}]"}


def test_two_checkpoints_of_one_architecture_are_two_pairs(tmp_path: Path) -> None:
    store = tmp_path / "results"
    write_record(store, _authors("a0", 0, 74.0))
    write_record(store, _authors("b0", 0, 73.0, sha=OTHER_SHA))
    board = leaderboard(load(store))
    assert sorted(board["teacher_ckpt_sha256"]) == sorted([AUTHORS_SHA, OTHER_SHA])
    assert board["n"].tolist() == [1, 1]


def test_tables_mark_the_teacher_kdbench_did_not_train_and_say_why(mixed: Path) -> None:
    board = leaderboard(load(mixed))
    display = leaderboard_display(board)
    teachers = {row[1] for row in display.rows}
    assert teachers == {P1[0], f"{P1[0]}†"}
    assert len(display.footnotes) == 1
    note = display.footnotes[0]
    assert note.startswith("† teacher loaded from a checkpoint file") and "not trained by kdbench" in note
    assert f"{P1[0]} (sha256 {AUTHORS_SHA[:12]})" in note
    markdown = to_markdown(display)
    assert f"| {P1[0]}† |" in markdown and markdown.rstrip().endswith(note)
    latex = to_latex(display)
    assert "$^\\dagger$" in latex and "?" not in latex  # the mark compiles with pdflatex
    assert "\\multicolumn{" in latex and "\\footnotesize" in latex.split("\\bottomrule")[1]


def test_the_crd_table_sets_both_teachers_side_by_side(mixed: Path) -> None:
    tables = crd_tables(leaderboard(load(mixed)))
    assert [name for name, _ in tables] == ["cifar100"]  # one table: the teacher's origin is no other budget
    table = tables[0][1]
    assert sorted(table.header[0][1:]) == [P1[0], f"{P1[0]}†"]
    column = table.header[0].index(f"{P1[0]}†")
    assert table.rows[0][column] == "79.42"  # the teacher row: the checkpoint's own accuracy
    assert table.footnotes and table.footnotes[0].startswith("†")


def test_the_console_leaderboard_marks_and_explains(mixed: Path) -> None:
    text = console_leaderboard(load(mixed))
    assert f"{P1[0]}† (79.42%) -> {P1[1]}" in text and f"{P1[0]} (79.00%) -> {P1[1]}" in text
    assert f"teacher checkpoint {AUTHORS_SHA[:12]}" in text
    assert "† teacher loaded from a checkpoint file" in text


def test_written_report_csv_names_the_teacher_of_every_row(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(load(mixed), out, formats="md,csv,html")
    board = pd.read_csv(out / "leaderboard.csv")
    kd = board[board["method_label"] == "kd"].set_index("teacher_origin")
    assert kd.loc["checkpoint", "teacher_ckpt_sha256"] == AUTHORS_SHA and pd.isna(kd.loc["trained",
                                                                                       "teacher_ckpt_sha256"])
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert runs.loc["ckpt0", "teacher_source"] == "checkpoint" and runs.loc["ckpt0", "teacher_ckpt_sha256"] == \
        AUTHORS_SHA
    crd = pd.read_csv(out / "table_cifar100.csv")
    assert f"{P1[0]}† -> {P1[1]}" in crd.columns and f"{P1[0]} -> {P1[1]}" in crd.columns
    assert "† teacher loaded from a checkpoint file" in (out / "leaderboard.md").read_text()
    assert "† teacher loaded from a checkpoint file" in (out / "index.html").read_text()


def test_a_store_of_kdbench_teachers_reads_as_before(tmp_path: Path) -> None:
    """Records without teacher_source or a digest (older ones) are kdbench-trained teachers: no mark, no note."""
    store = tmp_path / "results"
    write_record(store, make_record("ce0"))
    legacy = _kd("kd0", 0, 71.0)
    del legacy["teacher_source"], legacy["teacher_ckpt_sha256"]
    write_record(store, legacy)
    board = leaderboard(load(store))
    assert set(board["teacher_origin"]) == {"trained"} and board["teacher_ckpt_sha256"].isna().all()
    display = leaderboard_display(board)
    assert display.footnotes == [] and not any("†" in cell for row in display.rows for cell in row)
    assert "†" not in console_leaderboard(load(store))
    assert "teacher" not in board["budget"].iloc[0].replace("teacher 240 ep", "")


def test_pretrained_teachers_carry_their_own_mark(tmp_path: Path) -> None:
    store = tmp_path / "results"
    write_record(store, _kd("p0", 0, 71.0, teacher_source="pretrained", teacher_ckpt_sha256=OTHER_SHA))
    display = leaderboard_display(leaderboard(load(store)))
    assert display.rows[0][1] == f"{P1[0]}‡"
    assert display.footnotes[0].startswith("‡ teacher with timm's pretrained weights")


def test_published_comparison_says_which_teacher_was_measured(mixed: Path) -> None:
    compared = published_comparison(leaderboard(load(mixed)))
    kd = compared[compared["method"] == "kd"].set_index("teacher_origin")
    assert sorted(kd.index) == ["checkpoint", "trained"]
    assert kd.loc["checkpoint", "measured_top1"] == pytest.approx(74.5)
    assert kd.loc["checkpoint", "teacher_ckpt_sha256"] == AUTHORS_SHA
    display = published_display(compared)
    assert f"{P1[0]}†" in {row[0] for row in display.rows} and display.footnotes


def test_runs_under_other_data_options_are_other_pairs(tmp_path: Path) -> None:
    """The authors' normalisation (the CIFAR-100 spec's data options) is another budget; loader options are not."""
    store = tmp_path / "results"
    crd = {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}
    write_record(store, _kd("kd0", 0, 71.0, data_options={}))
    write_record(store, _kd("kd1", 1, 72.0, data_options={"workers": 4}))
    write_record(store, _kd("kd2", 0, 73.0, data_options=crd))
    board = leaderboard(load(store))
    assert sorted(board["n"]) == [1, 2]
    authors = board[board["budget_key"].str.contains('"mean": [0.5071, 0.4867, 0.4408]', regex=False)]
    assert len(authors) == 1 and authors["top1_mean"].iloc[0] == 73.0
    labels = set(pair_labels(board).values())  # where one pair has both, its labels say what tells them apart
    assert f"{P1[0]} → {P1[1]} [data mean=0.5071/0.4867/0.4408 std=0.2675/0.2565/0.2761]" in labels
    assert f"{P1[0]} → {P1[1]} [data defaults]" in labels
    assert "data" not in board["budget"].iloc[0]  # a single budget's label leaves the data options out
