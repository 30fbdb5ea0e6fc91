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
