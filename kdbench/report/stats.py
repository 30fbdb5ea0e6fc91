"""Small statistics without SciPy: Student-t quantiles and confidence-interval half-widths.

The t distribution's CDF is written through the regularized incomplete beta function,
``F(t) = 1 - I_x(nu/2, 1/2) / 2`` with ``x = nu / (nu + t^2)`` for ``t >= 0``, and ``I_x`` is evaluated with
its continued fraction (DLMF 8.17.22) by the modified Lentz method. Quantiles are found by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

_TINY = 1e-300
_CF_EPS = 1e-15
_CF_MAX_TERMS = 500


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """``1 + d1 / (1 + d2 / (1 + ...))`` with the terms of DLMF 8.17.22, evaluated by the modified Lentz method."""
    value = 1.0
    c = value
    d = 0.0
    for index in range(1, _CF_MAX_TERMS + 1):
        m, odd = divmod(index, 2)
        if odd:  # d_{2m+1}
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            numerator = (m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (_TINY if abs(d) < _TINY else d)
        c = 1.0 + numerator / c
        c = _TINY if abs(c) < _TINY else c
        step = c * d
        value *= step
        if abs(step - 1.0) < _CF_EPS:
            break
    return value


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """``I_x(a, b)``, the regularized incomplete beta function, for ``0 <= x <= 1`` and ``a, b > 0``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast only below this point
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / a / _beta_continued_fraction(x, a, b)


def t_cdf(t: float, dof: float) -> float:
    """CDF of Student's t distribution with ``dof`` degrees of freedom at ``t``."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    tail = 0.5 * regularized_incomplete_beta(dof / (dof + t * t), dof / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(probability: float, dof: float) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < probability:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, dof) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_std_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean, sample standard deviation (n-1), CI half-width (Student t, n-1 dof) and n of the finite values.

    The standard deviation and the half-width are NaN for fewer than two values; all three are NaN for none.
    """
    array = np.asarray([v for v in values if v is not None], dtype=float)
    array = array[np.isfinite(array)]
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(array.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    std = float(array.std(ddof=1))
    half_width = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return mean, std, half_width, n
