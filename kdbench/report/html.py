"""The self-contained HTML report: one ``index.html`` with inline CSS and JS and the figures embedded as PNG.

The page makes no request of its own: no CDN, no web font, no external image. Tables marked sortable sort on a
click of their header (numbers by value, missing values last); ``index.html#sort=<table id>:<column>[:asc]``
applies a sort on load, which also lets a headless browser check the sorting.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from kdbench.report.tables import DisplayTable, to_html


@dataclass
class HtmlFigure:
    """A figure for the page: file stem, PNG bytes and its paper width in inches."""

    name: str
    png: bytes
    width_in: float


@dataclass
class HtmlSection:
    """A titled table of the page; ``sortable`` tables get the click-to-sort script."""

    title: str
    table: DisplayTable
    table_id: str
    sortable: bool = False
    note: str | None = None


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.meta { color: #555; margin-top: 0; } p.note { color: #555; font-size: 0.85rem; }
table.kd-table { border-collapse: collapse; font-size: 0.82rem; margin: 0.5rem 0 1rem; }
table.kd-table th, table.kd-table td { padding: 0.2rem 0.55rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
table.kd-table thead th { border-bottom: 2px solid #444; background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.txt, th.txt { text-align: left; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.7em; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.7em; }
.scroll { overflow-x: auto; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #555; }
ul.notes { font-size: 0.85rem; color: #555; }
"""

_SCRIPT = """
(function () {
  "use strict";
  window.addEventListener("error", function (event) {
    document.body.setAttribute("data-error", String(event.message));
  });
  function sortKey(row, index) {
    var raw = row.cells[index] ? row.cells[index].getAttribute("data-sort") : null;
    if (raw === null || raw === "") { return null; }
    var number = Number(raw);
    return isNaN(number) ? raw.toLowerCase() : number;
  }
  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var descending = header.getAttribute("aria-sort") !== "descending";
    rows.sort(function (a, b) {
      var x = sortKey(a, index), y = sortKey(b, index);
      if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(headers, function (header, index) {
      header.tabIndex = 0;
      header.title = "sort";
      header.addEventListener("click", function () { sortBy(table, index, header); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { sortBy(table, index, header); }
      });
    });
  });
  var request = /^#sort=([A-Za-z0-9_-]+):(\\d+)(?::(asc|desc))?$/.exec(window.location.hash);
  if (request) {
    var table = document.getElementById(request[1]);
    var header = table ? table.tHead.rows[table.tHead.rows.length - 1].cells[Number(request[2])] : null;
    if (header) {
      header.click();
      if (request[3] === "asc") { header.click(); }
    }
  }
  document.body.setAttribute("data-ready", "1");
}());
"""


def _figure_html(figure: HtmlFigure) -> str:
    encoded = base64.b64encode(figure.png).decode("ascii")
    width_px = int(round(figure.width_in * 110))
    name = html.escape(figure.name)
    return (f'<figure id="fig-{name}"><img alt="{name}" width="{width_px}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{name} (.pdf / .png)</figcaption></figure>')


def _section_html(section: HtmlSection) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    parts.append('<div class="scroll">')
    parts.append(to_html(section.table, table_id=section.table_id, sortable=section.sortable))
    parts.append("</div>")
    return "\n".join(parts)


def render_page(
    title: str,
    meta: str,
    sections: list[HtmlSection],
    figures: list[HtmlFigure],
    notes: list[str],
    environment: HtmlSection | None = None,
) -> str:
    """The whole page as text.

    Args:
        title: the heading.
        meta: one line under the heading (store, run counts, when).
        sections: the tables, in order; the first is expected to be the leaderboard.
        figures: the figures, embedded as base64 PNG.
        notes: figures or tables skipped and why.
        environment: the table of machines and versions the numbers were measured with.
    """
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{html.escape(meta)}</p>']
    body.extend(_section_html(section) for section in sections)
    if figures:
        body.append("<h2>Figures</h2>")
        body.extend(_figure_html(figure) for figure in figures)
    if environment is not None:
        body.append(_section_html(environment))
    if notes:
        body.append("<h2>Notes</h2>")
        body.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *body,
        f"<script>{_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])
