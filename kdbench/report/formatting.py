"""Number formatting shared by the console table, the Markdown / LaTeX / HTML tables and the figures."""

from __future__ import annotations

import math
from typing import Any

DASH = "—"
NOT_SUPPORTED = "(n.s.)"
NOT_SUPPORTED_NOTE = ("(n.s.) = not supported by the seeds: fewer than 2 paired seeds, or the paired 95% interval "
                      "of Δ contains 0")


def is_missing(value: Any) -> bool:
    """True for None and NaN."""
    if value is None:
        return True
    try:
        return math.isnan(value)
    except TypeError:
        return False


def fixed(value: Any, decimals: int = 2) -> str:
    """``value`` with ``decimals`` decimals, or a dash when missing."""
    return DASH if is_missing(value) else f"{float(value):.{decimals}f}"


def signed(value: Any, decimals: int = 2) -> str:
    """``value`` with an explicit sign (``+1.20``, ``-0.30``), or a dash when missing."""
    return DASH if is_missing(value) else f"{float(value):+.{decimals}f}"


def significant(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits without exponent for everyday sizes (``1.23``, ``0.0712``)."""
    if is_missing(value):
        return DASH
    number = float(value)
    if number == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    decimals = max(0, digits - 1 - magnitude)
    if decimals > 6:
        return f"{number:.{digits - 1}e}"
    return f"{number:.{decimals}f}"


def mean_pm(mean: Any, spread: Any, decimals: int = 2) -> str:
    """``mean ± spread``, just ``mean`` when the spread is missing (one run), a dash when the mean is."""
    if is_missing(mean):
        return DASH
    if is_missing(spread):
        return fixed(mean, decimals)
    return f"{fixed(mean, decimals)} ± {fixed(spread, decimals)}"


def signed_pm(mean: Any, spread: Any, decimals: int = 2) -> str:
    """``+mean ± spread`` for gains, with the same conventions as :func:`mean_pm`."""
    if is_missing(mean):
        return DASH
    if is_missing(spread):
        return signed(mean, decimals)
    return f"{signed(mean, decimals)} ± {fixed(spread, decimals)}"


#: The mark a teacher's name carries when kdbench did not train it: a checkpoint file (``--teacher-ckpt``, such as
#: the authors' released CIFAR-100 teachers) or timm's pretrained weights. A teacher trained by kdbench has none.
TEACHER_MARKS = {"checkpoint": "†", "pretrained": "‡"}
_ORIGIN_TEXT = {
    "checkpoint": "teacher loaded from a checkpoint file (--teacher-ckpt, e.g. the authors' released teachers), "
                  "not trained by kdbench",
    "pretrained": "teacher with timm's pretrained weights, not trained by kdbench",
}
#: Digits of a checkpoint's SHA-256 shown in tables and labels (the CSV files keep all 64)
SHA_DIGITS = 12


def teacher_mark(origin: Any) -> str:
    """The mark of a teacher of ``origin`` (``trained``, ``checkpoint``, ``pretrained``); empty for kdbench's own."""
    return TEACHER_MARKS.get(origin, "") if isinstance(origin, str) else ""


def marked_teacher(teacher: Any, origin: Any) -> str:
    """The teacher's name with its mark (``cifar_resnet32x4†``)."""
    return f"{teacher}{teacher_mark(origin)}"


def teacher_footnotes(teachers: Any) -> list[str]:
    """One footnote per marked origin: ``† teacher loaded from ...: cifar_resnet32x4 (sha256 1a2b...)``.

    ``teachers`` yields ``(teacher, origin, sha256)``; teachers trained by kdbench and teacher-free rows give none.
    """
    named: dict[str, list[str]] = {}
    for teacher, origin, sha256 in teachers:
        if not isinstance(origin, str) or origin not in TEACHER_MARKS:
            continue
        digest = f" (sha256 {sha256[:SHA_DIGITS]})" if isinstance(sha256, str) and sha256 else ""
        text = f"{teacher}{digest}"
        if text not in named.setdefault(origin, []):
            named[origin].append(text)
    return [f"{TEACHER_MARKS[origin]} {_ORIGIN_TEXT[origin]}: {', '.join(sorted(names))}"
            for origin, names in sorted(named.items(), key=lambda item: list(TEACHER_MARKS).index(item[0]))]
