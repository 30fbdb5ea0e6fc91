"""The HTML report opened in a real headless Chromium: it loads without errors, shows the right leaderboard, sorts,
and is self-contained. Skipped only where no Chromium / Chrome is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdbench.report import write_report
from kdbench.results import load
from tests.helpers import DIGITS_CE, GPU, P1, P2, SHORT_KD, TEACHER_FREE, TOP1, build_store

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome installed")


class PageParser(HTMLParser):
    """Collects the body's attributes and, per table id, the header texts and the body cells (text, data-sort)."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.headers: dict[str, list[str]] = {}
        self.header_attributes: dict[str, list[dict[str, str | None]]] = {}
        self.rows: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._cell_attributes: dict[str, str | None] = {}
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        elif tag == "table":
            self._table = attributes.get("id") or f"table{len(self.rows)}"
            self.headers[self._table], self.header_attributes[self._table], self.rows[self._table] = [], [], []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self._table and not self._in_head:
            self.rows[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._cell_attributes = [], attributes
        elif tag == "img":
            self.images.append(attributes.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            text = "".join(self._cell).strip()
            if self._in_head:
                self.headers[self._table].append(text)
                self.header_attributes[self._table].append(self._cell_attributes)
            else:
                self.rows[self._table][-1].append((text, self._cell_attributes.get("data-sort")))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("html")
    build_store(root / "results")
    result = write_report(load(root / "results"), root / "reports", formats=("html",))
    return root / "reports" / "index.html", result


def open_in_browser(url: str, profile: Path) -> tuple[PageParser, str]:
    """The DOM after the page's scripts ran, parsed, and the browser's log."""
    assert BROWSER is not None
    done = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parser = PageParser()
    parser.feed(done.stdout)
    return parser, done.stderr


def _expected_top1(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _expected_leaderboard() -> set[tuple[str, str, str, str, str]]:
    teacher_of = {P1[1]: P1[0], P2[1]: P2[0]}
    rows = {("cifar100", teacher_of[student], student, label, _expected_top1(list(per_seed.values())))
            for (student, label), per_seed in TOP1.items()}
    rows.add(("cifar100", P1[0], P1[1], "kd", f"{SHORT_KD:.2f}"))
    rows.add(("cifar100", "none", P1[0], "ce", "79.00"))
    rows.add(("digits", "none", "test_student", "ce", _expected_top1(list(DIGITS_CE.values()))))
    return rows


def test_page_loads_without_errors(page: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = page
    dom, log = open_in_browser(path.as_uri(), tmp_path / "profile")
    assert dom.body.get("data-ready") == "1"  # the script ran to its end
    assert "data-error" not in dom.body
    assert "Uncaught" not in log and "SyntaxError" not in log


def test_leaderboard_has_the_right_rows(page: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = page
    dom, _ = open_in_browser(path.as_uri(), tmp_path / "profile")
    headers = dom.headers["leaderboard"]
    index = {name: headers.index(name) for name in ("Dataset", "Teacher", "Student", "Method", "Top-1 (%)")}
    got = [tuple(row[index[name]][0] for name in index) for row in dom.rows["leaderboard"]]
    assert len(got) == len(set(got))
    assert set(got) == _expected_leaderboard()
    # teacher-free methods appear once in every pair of their student
    assert sum(1 for row in got if row[3] == "ce" and row[2] == P1[1]) == 1
    assert {row[3] for row in got if row[1] == P2[0]} == {"kd", "dkd"} | TEACHER_FREE
    failed = dom.rows["failed_runs"]
    assert len(failed) == 1 and any("CUDA out of memory" in cell for cell, _ in failed[0])


@pytest.mark.parametrize("direction", ["desc", "asc"])
def test_leaderboard_sorts_on_header_click(page: tuple[Path, Any], tmp_path: Path, direction: str) -> None:
    path, _ = page
    dom, _ = open_in_browser(path.as_uri(), tmp_path / "profile")
    column = dom.headers["leaderboard"].index("Top-1 (%)")
    before = [float(row[column][1]) for row in dom.rows["leaderboard"]]
    assert before != sorted(before, reverse=direction == "desc")  # the written order is by pair, not global
    sorted_dom, _ = open_in_browser(f"{path.as_uri()}#sort=leaderboard:{column}:{direction}", tmp_path / "profile")
    after = [float(row[column][1]) for row in sorted_dom.rows["leaderboard"]]
    assert after == sorted(before, reverse=direction == "desc")
    state = sorted_dom.header_attributes["leaderboard"][column].get("aria-sort")
    assert state == ("descending" if direction == "desc" else "ascending")
    method = sorted_dom.headers["leaderboard"].index("Method")
    assert len({tuple(cell for cell, _ in row) for row in sorted_dom.rows["leaderboard"]}) == len(after)
    assert all(row[method][0] for row in sorted_dom.rows["leaderboard"])  # rows moved whole


def test_page_is_self_contained(page: tuple[Path, Any]) -> None:
    path, result = page
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.IGNORECASE)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    dom = PageParser()
    dom.feed(text)
    figures = [note for note in result.notes if note.startswith("figure")]
    assert len(dom.images) == 11 and figures  # 11 figures drawn, the rest skipped and listed
    for source in dom.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for note in figures:
        assert note in text


def test_page_shows_the_measuring_environment(page: tuple[Path, Any]) -> None:
    path, _ = page
    dom = PageParser()
    dom.feed(path.read_text(encoding="utf-8"))
    headers = dom.headers["environment"]
    for column in ("device_name", "gpu_name", "cpu_threads", "torch_version", "timm_version", "kdbench_version",
                   "git_commit"):
        assert column in headers
    cells = {header: {row[i][0] for row in dom.rows["environment"]} for i, header in enumerate(headers)}
    assert GPU in cells["gpu_name"] and "Test CPU" in cells["device_name"]
    assert cells["torch_version"] == {"2.4.0"} and cells["git_commit"] == {"0123abc"}
    assert cells["cpu_threads"] == {"2"}
