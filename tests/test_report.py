"""kdbench.report: aggregation against values computed here, the console table, written files, figures, command."""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kdbench.commands.report import add_parser as add_report_parser
from kdbench.commands.report import run_report
from kdbench.errors import KDBenchError
from kdbench.report import (
    console_leaderboard,
    efficiency_table,
    expand_pairs,
    failed_runs,
    leaderboard,
    method_costs,
    method_ranks,
    plot_accuracy_vs_cost,
    plot_delta_heatmap,
    plot_delta_top1,
    published_comparison,
    write_report,
)
from kdbench.report.figures import NoFigureData, figure_bytes
from kdbench.report.stats import t_quantile
from kdbench.report.style import method_colour, method_slots
from kdbench.results import load, write_record
from tests.helpers import (
    DIGITS_CE,
    GPU,
    P1,
    P2,
    PARAMS,
    SHORT_KD,
    TEACHER_TOP1,
    TOP1,
    TRAIN_TIME,
    build_store,
    make_record,
)

# Student-t 0.975 quantiles from a printed table (4 decimals), by degrees of freedom.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 20: 2.0860, 30: 2.0423}




@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "results"
    build_store(path)
    return path


@pytest.fixture(scope="module")
def runs(store: Path) -> pd.DataFrame:
    return load(store)


@pytest.fixture(scope="module")
def board(runs: pd.DataFrame) -> pd.DataFrame:
    return leaderboard(runs)


def _row(board: pd.DataFrame, teacher: str, student: str, label: str, epochs: int = 240) -> pd.Series:
    rows = board[(board["teacher"] == teacher) & (board["student"] == student) & (board["method_label"] == label)
                 & board["budget_key"].str.contains(f'"epochs": {epochs}')]
    assert len(rows) == 1, (teacher, student, label, len(rows))
    return rows.iloc[0]


def _expected(values: list[float]) -> tuple[float, float, float]:
    array = np.array(values)
    std = float(array.std(ddof=1))
    return float(array.mean()), std, T975[len(values) - 1] * std / math.sqrt(len(values))


# ------------------------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("dof", sorted(T975))
def test_t_quantile_matches_printed_table(dof: int) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(T975[dof], abs=6e-5)
    assert t_quantile(0.025, dof) == pytest.approx(-T975[dof], abs=6e-5)


# ----------------------------------------------------------------------------------------------- aggregation

@pytest.mark.parametrize(("pair", "label"), [(P1, "kd"), (P1, "ce"), (P2, "dkd"), (P2, "kd"), (P1, "tf_kd")])
def test_leaderboard_mean_std_ci_match_numpy(board: pd.DataFrame, pair: tuple[str, str], label: str) -> None:
    values = list(TOP1[(pair[1], label)].values())
    mean, std, ci = _expected(values)
    row = _row(board, *pair, label)
    assert row["n"] == len(values)
    assert row["top1_mean"] == pytest.approx(mean, abs=1e-9)
    assert row["top1_std"] == pytest.approx(std, abs=1e-9)
    assert row["top1_ci95"] == pytest.approx(ci, rel=1e-4)
    assert row["top5_mean"] == pytest.approx(mean + 20, abs=1e-9)
    assert row["train_time_s_mean"] == pytest.approx(TRAIN_TIME[label])


def test_single_run_has_no_std_or_ci(board: pd.DataFrame) -> None:
    row = _row(board, *P1, "kd(temperature=2)")
    assert row["n"] == 1 and row["top1_mean"] == pytest.approx(73.10)
    assert math.isnan(row["top1_std"]) and math.isnan(row["top1_ci95"])
    assert row["method"] == "kd" and row["method_params_json"] == '{"temperature": 2.0}'


def test_failed_run_counted_not_averaged(board: pd.DataFrame, runs: pd.DataFrame) -> None:
    row = _row(board, *P1, "dkd")
    assert row["n"] == 2 and row["n_failed"] == 1
    assert row["top1_mean"] == pytest.approx(np.mean([75.90, 76.35]))
    assert row["extra_params_m"] == pytest.approx(0.05)
    listed = failed_runs(runs)
    assert len(listed) == 1 and listed.iloc[0]["error"].startswith("RuntimeError")
    assert listed.iloc[0]["teacher"] == P1[0]
    assert int(board["n_failed"].sum()) == 1  # not repeated into other pairs


def test_teacher_free_runs_join_every_pair_of_their_student(board: pd.DataFrame, runs: pd.DataFrame) -> None:
    for teacher, student in (P1, P2):
        for label in ("ce", "tf_kd"):
            row = _row(board, teacher, student, label)
            assert row["n"] == len(TOP1[(student, label)]) and not row["uses_teacher"]
    # the teacher-based runs define the pairs; the teacher's accuracy is the pair's
    assert _row(board, *P1, "ce")["teacher_top1"] == pytest.approx(TEACHER_TOP1[P1[0]])
    # a student without any teacher-based run forms a pair with teacher "none"
    digits = board[board["dataset"] == "digits"]
    assert digits["teacher"].tolist() == ["none"]
    assert digits.iloc[0]["top1_mean"] == pytest.approx(np.mean(list(DIGITS_CE.values())))
    # the P1 ce runs (240 epochs) do not join the 10-epoch kd pair: budgets differ
    short = _row(board, *P1, "kd", epochs=10)
    assert short["top1_mean"] == pytest.approx(SHORT_KD)
    assert math.isnan(short["delta_top1"]) and short["n_paired"] == 0
    short_pair = board[board["budget_key"].str.contains('"epochs": 10')]
    assert short_pair["method_label"].tolist() == ["kd"]
    expanded = expand_pairs(runs)
    ce_p1 = expanded[(expanded["method"] == "ce") & (expanded["student"] == P1[1])]
    assert sorted(ce_p1["teacher"]) == [P1[0]] * 3  # joined once per pair, not once per teacher-based run


def test_delta_is_paired_by_seed(board: pd.DataFrame) -> None:
    kd, ce = TOP1[(P2[1], "kd")], TOP1[(P2[1], "ce")]
    common = sorted(set(kd) & set(ce))
    assert common == [1, 2]
    differences = [kd[s] - ce[s] for s in common]
    mean, std, ci = _expected(differences)
    row = _row(board, *P2, "kd")
    assert row["n_paired"] == 2 and row["n"] == 3
    assert row["delta_top1"] == pytest.approx(mean, abs=1e-9)
    assert row["delta_top1_std"] == pytest.approx(std, abs=1e-9)
    assert row["delta_top1_ci95"] == pytest.approx(ci, rel=1e-4)
    # differs from the difference of the means, which ignores the pairing
    assert row["delta_top1"] != pytest.approx(np.mean(list(kd.values())) - np.mean(list(ce.values())), abs=1e-3)
    baseline = _row(board, *P2, "ce")
    assert baseline["is_baseline"] and math.isnan(baseline["delta_top1"])


def test_rows_sorted_by_top1_within_pair(board: pd.DataFrame) -> None:
    for _, rows in board.groupby(["dataset", "teacher", "student", "budget_key"], sort=False):
        means = rows["top1_mean"].dropna().tolist()
        assert means == sorted(means, reverse=True)


def test_method_ranks_match_independent_ranking(runs: pd.DataFrame) -> None:
    expected: dict[str, list[float]] = {}
    for student in (P1[1], P2[1]):
        means = {label: np.mean(list(v.values())) for (s, label), v in TOP1.items() if s == student}
        for rank, label in enumerate(sorted(means, key=means.get, reverse=True), start=1):
            expected.setdefault(label, []).append(rank)
    expected["kd"].append(1)  # alone in the 10-epoch pair
    expected["ce"].append(1)  # alone on digits
    expected["ce"].append(1)  # the teacher trained as a plain student: its own pair
    ranks = method_ranks(runs).set_index("method_label")
    for label, values in expected.items():
        assert ranks.loc[label, "mean_rank"] == pytest.approx(np.mean(values)), label
        assert ranks.loc[label, "n_pairs"] == len(values)
    assert ranks.index[0] == "dkd"


def test_method_costs_relative_to_baseline(runs: pd.DataFrame) -> None:
    costs = method_costs(runs)
    assert set(costs["device_name"]) == {GPU, "Test CPU"}  # times from different machines are kept apart
    costs = costs[costs["device_name"] == GPU].set_index("method_label")
    assert costs.loc["dkd", "time_vs_baseline"] == pytest.approx(1.6)
    assert costs.loc["kd", "time_vs_baseline"] == pytest.approx(1.3)
    assert costs.loc["ce", "time_vs_baseline"] == pytest.approx(1.0)
    assert costs.loc["dkd", "n_runs"] == 5  # failed runs cost nothing measurable: only finished runs


def test_efficiency_table_keeps_machines_apart(runs: pd.DataFrame) -> None:
    table = efficiency_table(runs)
    gpu_rows = table[(table["model"] == P1[1]) & table["gpu_name"].notna()]
    assert gpu_rows["gpu_name"].tolist() == [GPU]
    assert gpu_rows.iloc[0]["gpu_samples_per_s"] == pytest.approx(20000.0)
    assert gpu_rows.iloc[0]["params_m"] == pytest.approx(PARAMS[P1[1]])
    digits = table[table["model"] == "test_student"].iloc[0]
    assert digits["device_name"] == "Test CPU" and pd.isna(digits["gpu_samples_per_s"])


def test_efficiency_table_drops_unmeasured_gpu_columns(tmp_path: Path) -> None:
    build_store(tmp_path / "cpu", with_gpu=False)
    runs = load(tmp_path / "cpu")
    table = efficiency_table(runs[runs["dataset"] == "digits"])
    assert "gpu_samples_per_s" not in table and "cpu_latency_ms_bs1" in table


# -------------------------------------------------------------------------------------------------- console

def test_console_leaderboard_layout(runs: pd.DataFrame) -> None:
    text = console_leaderboard(runs)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(f"cifar100: {P2[0]}"))
    assert "-> cifar_resnet20" in lines[header] and "240 ep" in lines[header] and "72.34%" in lines[header]
    block = []
    for line in lines[header + 2:]:
        if not line.strip():
            break
        block.append(line.split())
    assert [cells[0] for cells in block] == ["dkd", "kd", "tf_kd", "ce"]
    mean, std, _ = _expected(list(TOP1[(P2[1], "dkd")].values()))
    assert f"{mean:.2f} ± {std:.2f} (3)" in " ".join(block[0])
    ce_line = " ".join(block[3])
    assert "—" in ce_line  # no gain of the baseline over itself, no agreement without a teacher
    digits = next(line for line in lines if line.startswith("digits: none -> test_student"))
    assert digits
    assert "1 failed run: dkd (1)" in text


def test_console_leaderboard_without_runs() -> None:
    assert console_leaderboard(pd.DataFrame()) == "no runs to report"


# --------------------------------------------------------------------------------------------- report files

@pytest.fixture(scope="module")
def report(runs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Every file format but HTML (tested in test_report_html.py), on the main CIFAR-100 budget to stay fast."""
    out = tmp_path_factory.mktemp("reports")
    main_budget = runs[(runs["dataset"] == "cifar100") & (runs["epochs"] == 240)]
    return out, write_report(main_budget, out, formats=("md", "tex", "csv", "pdf", "png"))


def test_every_file_written_and_not_empty(report: tuple[Path, Any]) -> None:
    out, result = report
    names = {p.name for p in result.files}
    for stem in ("leaderboard", "table_cifar100", "method_ranks", "method_cost", "efficiency", "failed_runs"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names, stem
    for stem in ("accuracy_vs_gmacs_cifar100", "accuracy_vs_params_cifar100", "accuracy_vs_cpu_latency_cifar100",
                 "accuracy_vs_gpu_throughput_cifar100", "delta_top1", "delta_heatmap", "training_curves"):
        assert {f"{stem}.pdf", f"{stem}.png"} <= names, stem
    assert "runs.csv" in names and "index.html" not in names
    for path in result.files:
        assert path.parent == out and path.stat().st_size > 0, path
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing else, no temporary file left behind
    assert result.notes == []


def test_figures_without_data_are_skipped_with_a_note(runs: pd.DataFrame, tmp_path: Path) -> None:
    digits = runs[runs["dataset"] == "digits"]  # CPU only, one pair, the baseline alone
    result = write_report(digits, tmp_path, formats=("png",))
    assert sorted(p.name for p in result.files) == [
        "accuracy_vs_cpu_latency_digits.png", "accuracy_vs_gmacs_digits.png", "accuracy_vs_params_digits.png",
        "training_curves.png",
    ]
    skipped = {note.split()[1]: note for note in result.notes}
    assert set(skipped) == {"accuracy_vs_gpu_throughput_digits", "delta_top1", "delta_heatmap",
                            "published_vs_measured"}
    assert "gpu_samples_per_s" in skipped["accuracy_vs_gpu_throughput_digits"]


def test_figures_are_pdf_and_300_dpi_png_of_paper_width(report: tuple[Path, Any]) -> None:
    from PIL import Image

    out, result = report
    for path in result.files:
        if path.suffix == ".pdf":
            assert path.read_bytes()[:5] == b"%PDF-", path
        if path.suffix == ".png":
            with Image.open(path) as image:
                dpi = image.info["dpi"]
                assert dpi[0] == pytest.approx(300, abs=0.5), path
                assert image.width in (round(3.3 * 300), round(7.0 * 300)), (path, image.width)


def test_leaderboard_csv_has_the_numbers(report: tuple[Path, Any]) -> None:
    out, _ = report
    table = pd.read_csv(out / "leaderboard.csv")
    assert len(table) == 9  # P1: dkd, kd, kd(temperature=2), tf_kd, ce; P2: dkd, kd, tf_kd, ce
    row = table[(table["student"] == P1[1]) & (table["method_label"] == "kd") & (table["teacher"] == P1[0])
                & table["budget_key"].str.contains('"epochs": 240')].iloc[0]
    assert row["top1_mean"] == pytest.approx(np.mean(list(TOP1[(P1[1], "kd")].values())))


def test_crd_table_layout(report: tuple[Path, Any]) -> None:
    out, _ = report
    lines = (out / "table_cifar100.md").read_text(encoding="utf-8").splitlines()
    assert f"{P1[0]} → {P1[1]}" in lines[0] and f"{P2[0]} → {P2[1]}" in lines[0]
    assert lines[2].startswith("| Teacher | 79.42 |")
    ce1, ce2 = (_expected(list(TOP1[(s, "ce")].values())) for s in (P1[1], P2[1]))
    assert lines[3] == f"| Student | {ce1[0]:.2f} ± {ce1[1]:.2f} | {ce2[0]:.2f} ± {ce2[1]:.2f} |"
    dkd = next(line for line in lines if line.startswith("| dkd |"))
    assert dkd.count("**") == 4  # best of both pairs in bold
    tex = (out / "table_cifar100.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "\\bottomrule" in tex and "cifar\\_resnet8x4" in tex and "$\\pm$" in tex


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex installed")
def test_latex_tables_compile(report: tuple[Path, Any], tmp_path: Path) -> None:
    out, result = report
    inputs = "\n".join(f"\\input{{{p.as_posix()}}}\\par\\bigskip" for p in result.files if p.suffix == ".tex")
    document = tmp_path / "tables.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                        "\\usepackage[landscape,margin=1cm]{geometry}\n\\begin{document}\n\\tiny\n"
                        f"{inputs}\n\\end{{document}}\n", encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "tables.pdf").read_bytes()[:5] == b"%PDF-"


def test_latex_escapes_specials() -> None:
    from kdbench.report.tables import latex_escape

    assert latex_escape("a_b & 50% #1 {x} ~ ^ $ \\") == (
        "a\\_b \\& 50\\% \\#1 \\{x\\} \\textasciitilde{} \\textasciicircum{} \\$ \\textbackslash{}"
    )
    assert latex_escape("1.0 ± 0.2 — Δ → é") == "1.0 $\\pm$ 0.2 --- $\\Delta$ $\\rightarrow$ ?"


# ------------------------------------------------------------------------------------------------- figures

def test_figures_without_data_are_skipped(runs: pd.DataFrame) -> None:
    digits = runs[runs["dataset"] == "digits"]
    with pytest.raises(NoFigureData, match="gpu_samples_per_s"):
        plot_accuracy_vs_cost(digits, "gpu_samples_per_s")
    with pytest.raises(NoFigureData):
        plot_delta_top1(digits)  # the baseline alone: no gain to draw
    one_pair = runs[(runs["student"] == P1[1]) & (runs["epochs"] == 240)]
    assert plot_delta_top1(one_pair) is not None
    with pytest.raises(NoFigureData, match="two pairs"):
        plot_delta_heatmap(one_pair)


def test_one_colour_per_method_in_every_figure(runs: pd.DataFrame) -> None:
    from matplotlib.colors import to_hex

    slots = method_slots(["kd", "dkd", "zzz_plugin"])
    assert method_colour("kd", slots) == method_colour("kd", method_slots(["kd"]))  # fixed, whatever else is there
    assert method_colour("zzz_plugin", slots) != method_colour("kd", slots)
    colours = {method_colour(m, slots) for m in ("kd", "dkd", "zzz_plugin", "ce")}
    assert len(colours) == 4

    bars = plot_delta_top1(runs)
    bar_colours = {to_hex(patch.get_facecolor()) for patch in bars.axes[0].patches}
    points = plot_accuracy_vs_cost(runs[runs["dataset"] == "cifar100"], "gmacs")
    point_colours = {to_hex(line.get_color()) for line in points.axes[0].lines if line.get_marker() not in
                     ("None", "", None, "*")}
    kd_colour = method_colour("kd", method_slots(runs["method"]))
    assert kd_colour.lower() in bar_colours and kd_colour.lower() in point_colours
    assert bars.get_figwidth() in (3.3, 7.0) and points.get_figwidth() in (3.3, 7.0)
    assert not bars.axes[0].get_title() and not points.axes[0].get_title()  # captions carry titles
    assert points.axes[0].xaxis.label.get_fontsize() == pytest.approx(8)


def test_figure_bytes_are_valid(runs: pd.DataFrame) -> None:
    figure = plot_delta_top1(runs)
    assert figure_bytes(figure, "pdf")[:5] == b"%PDF-"
    assert figure_bytes(figure, "png", dpi=72)[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------- published table

def test_published_comparison_matches_pairs_and_default_variants(board: pd.DataFrame) -> None:
    published = pd.DataFrame({
        "dataset": ["cifar100"] * 5,
        "teacher": [P1[0], P1[0], P1[0], P2[0], P1[0]],
        "student": [P1[1], P1[1], P1[1], P2[1], "cifar_wrn_16_2"],
        "method": ["kd", "teacher", "ce", "kd", "kd"],
        "top1": [73.33, 79.42, 72.50, 70.66, 74.92],
        "reporting": ["last epoch"] * 5,
        "source": ["paper"] * 5,
    })
    comparison = published_comparison(board, published=published)
    got = {(r.teacher, r.student, r.method): r for r in comparison.itertuples()}
    assert set(got) == {(P1[0], P1[1], "kd"), (P1[0], P1[1], "teacher"), (P1[0], P1[1], "ce"),
                        (P2[0], P2[1], "kd")}  # the 10-epoch kd pair matches too: its budget is reported
    kd = comparison[(comparison["student"] == P1[1]) & (comparison["method"] == "kd")]
    assert len(kd) == 2
    full = kd[kd["budget"].str.startswith("240 ep")].iloc[0]
    assert full["measured_top1"] == pytest.approx(np.mean(list(TOP1[(P1[1], "kd")].values())))
    assert full["difference"] == pytest.approx(full["measured_top1"] - 73.33)
    assert got[(P1[0], P1[1], "teacher")].measured_top1 == pytest.approx(79.42)


# ------------------------------------------------------------------------------------------------- command

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdbench")
    add_report_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_defaults() -> None:
    args = _parse(["report"])
    assert (args.results, args.out, args.baseline, args.formats) == ("results", "reports", "ce",
                                                                    "md,tex,csv,pdf,png,html")
    assert args.handler is run_report


def test_command_on_missing_or_empty_store(tmp_path: Path) -> None:
    with pytest.raises(KDBenchError) as missing:
        run_report(_parse(["report", "--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]))
    assert "\n" not in str(missing.value) and "kdbench run" in str(missing.value)
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(KDBenchError, match="no run records"):
        run_report(_parse(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]))
    with pytest.raises(KDBenchError, match="unknown report format"):
        run_report(_parse(["report", "--results", str(tmp_path / "empty"), "--format", "md,docx"]))


def test_command_writes_chosen_formats(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "md_only"
    assert run_report(_parse(["report", "--results", str(store), "--out", str(out), "--format", "md"])) == 0
    written = sorted(p.suffix for p in out.iterdir())
    assert set(written) == {".md"}
    printed = capsys.readouterr().out
    assert printed.startswith("cifar100: ") and f"files to {out}" in printed


def test_teacher_cost_from_the_records_places_the_teacher_star(tmp_path: Path) -> None:
    # no run trained the teacher as a student: its MACs come from teacher_gmacs in the kd records
    for seed, top1 in ((0, 71.0), (1, 72.0)):
        write_record(tmp_path, make_record(f"kd{seed}", teacher=P1[0], method="kd", method_label="kd",
                                           teacher_source="trained", teacher_epochs=240, teacher_top1=79.42,
                                           seed=seed, top1=top1, gmacs=0.177, teacher_gmacs=1.08))
    figure = plot_accuracy_vs_cost(load(tmp_path), "gmacs")
    stars = [line for line in figure.axes[0].lines if line.get_marker() == "*"]
    assert len(stars) == 1
    assert list(stars[0].get_xdata()) == [pytest.approx(1.08)] and list(stars[0].get_ydata()) == [79.42]


def test_gaps_the_seeds_cannot_support_are_marked(board: pd.DataFrame, runs: pd.DataFrame) -> None:
    from kdbench.report.aggregate import delta_is_supported
    from kdbench.report.formatting import NOT_SUPPORTED
    from kdbench.report.tables import leaderboard_display

    assert bool(_row(board, *P1, "kd")["delta_supported"])  # three seeds, +1.5 pp every time
    assert not bool(_row(board, *P1, "kd(temperature=2)")["delta_supported"])  # one seed: nothing to support it
    assert not delta_is_supported(0.3, 0.9, 3) and delta_is_supported(-1.2, 0.9, 3)
    assert not delta_is_supported(5.0, math.nan, 1)
    text = console_leaderboard(runs)
    marked = [line.split()[0] for line in text.splitlines() if NOT_SUPPORTED in line and line.startswith("  ")]
    assert "kd(temperature=2)" in marked and "kd" not in marked
    assert "(n.s.) = not supported by the seeds" in text
    display = leaderboard_display(board)
    cells = {row[display.header[0].index("Method")]: row[display.header[0].index("Δ vs ce")] for row in display.rows}
    assert cells["kd(temperature=2)"].endswith(NOT_SUPPORTED) and not cells["kd"].endswith(NOT_SUPPORTED)


def test_delta_figure_draws_unsupported_gaps_pale(runs: pd.DataFrame) -> None:
    from kdbench.report.figures import UNSUPPORTED_ALPHA

    figure = plot_delta_top1(runs)
    alphas = [patch.get_alpha() for patch in figure.axes[0].patches]
    assert UNSUPPORTED_ALPHA in alphas and 1.0 in alphas


def test_published_comparison_matches_variants_by_their_label(tmp_path: Path) -> None:
    """The CRD+KD row of the published table is the run labelled `crd(kd_weight=1)`, not the default `crd`."""
    store = tmp_path / "store"
    common = dict(student=P1[1], teacher=P1[0], teacher_source="trained", teacher_epochs=240, teacher_seed=0,
                  teacher_top1=79.42, agreement=80.0)
    write_record(store, make_record("ce0"))
    write_record(store, make_record("crd0", method="crd", method_label="crd", top1=75.5, **common))
    write_record(store, make_record("crdkd0", method="crd", method_label="crd(kd_weight=1)",
                                    method_params={"kd_weight": 1.0}, top1=75.9, **common))
    compared = published_comparison(leaderboard(load(store)))
    methods = set(compared["method"])
    assert {"crd", "crd(kd_weight=1)"} <= methods
    row = compared[compared["method"] == "crd(kd_weight=1)"].iloc[0]
    assert row["measured_top1"] == 75.9 and row["published_top1"] > 0



def test_published_comparison_names_a_pairs_only_variant_by_its_method(tmp_path: Path) -> None:
    """DKD's configs set beta per pair: the pair's dkd(beta=6) run is the DKD row of the published table."""
    store = tmp_path / "store"
    write_record(store, make_record("ce0", student="cifar_vgg8"))
    write_record(store, make_record("dkd0", student="cifar_vgg8", teacher="cifar_vgg13", teacher_source="trained",
                                    teacher_epochs=240, teacher_seed=0, teacher_top1=74.64, agreement=80.0,
                                    method="dkd", method_label="dkd(beta=6)", method_params={"beta": 6.0},
                                    top1=74.5))
    compared = published_comparison(leaderboard(load(store)))
    assert compared.loc[compared["method"] == "dkd", "measured_top1"].tolist() == [74.5]
