"""One look for every figure: paper sizes, small fonts, and one fixed colour-blind-safe colour per method.

Colours come from the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design") followed by Paul Tol's
"muted" scheme (https://personal.sron.nl/~pault/). Each method keeps its colour (and marker) in every figure and
every report: built-in methods have a fixed slot in :func:`method_order` (their order in the registry: by family,
then by name); other methods (plugins) follow in alphabetical order. The no-distillation baseline ``ce`` is grey
and the teacher black.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

ONE_COLUMN_IN = 3.3
TWO_COLUMN_IN = 7.0

TEACHER_COLOUR = "#000000"
BASELINE_COLOUR = "#777777"

# Okabe-Ito without black (kept for the teacher), yellow last: it is faint on white.
_OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
# Paul Tol "muted", without its pale grey.
_TOL_MUTED = ["#332288", "#882255", "#117733", "#999933", "#44AA99", "#CC6677", "#AA4499", "#88CCEE", "#DDCC77"]
PALETTE: list[str] = _OKABE_ITO + _TOL_MUTED + ["#F0E442"]
# 11 markers against 16 colours: two methods that share a colour never share a marker as well.
MARKERS: list[str] = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h"]


@functools.cache
def method_order() -> tuple[str, ...]:
    """The built-in methods (the baseline aside) in the order that fixes their colours: by family, then by name.

    It is read from the method registry (:func:`kdbench.distiller.methods_by_family`), never written out by hand.
    Past the palette, colours repeat with another marker.
    """
    from kdbench.distiller import methods_by_family

    return tuple(name for name in methods_by_family(builtin_only=True) if name != "ce")


STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": None,  # keep the paper size exactly: constrained layout already fits labels and legends
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "figure.dpi": 100,
}


def method_slots(methods: Iterable[str], baseline: str = "ce") -> dict[str, int]:
    """Palette slot of each method: fixed for built-ins, after them for the others.

    The others (plugins) follow alphabetically, each on a colour none of ``methods`` has while one is left.
    """
    methods = set(methods)
    order = method_order()
    slots: dict[str, int] = {name: index for index, name in enumerate(order)}
    used = {slots[m] % len(PALETTE) for m in methods if m in slots}
    slot = len(order)
    for name in sorted(m for m in methods if m not in slots and m != baseline):
        while slot % len(PALETTE) in used and len(used) < len(PALETTE):  # a colour no method shown has, if one is left
            slot += 1
        slots[name] = slot
        used.add(slot % len(PALETTE))
        slot += 1
    return slots


def method_colour(method: str, slots: dict[str, int], baseline: str = "ce") -> str:
    """The colour of ``method``: grey for the baseline, else its palette slot (cycling past the end)."""
    if method == baseline:
        return BASELINE_COLOUR
    return PALETTE[slots[method] % len(PALETTE)]


def method_marker(method: str, slots: dict[str, int], baseline: str = "ce") -> str:
    """The marker of ``method``: a circle for the baseline, else one per slot, so colour is not the only cue."""
    if method == baseline:
        return "o"
    return MARKERS[slots[method] % len(MARKERS)]
