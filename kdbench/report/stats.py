"""Small statistics for reports: Student-t quantiles (SciPy's) and mean, standard deviation and t interval."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def t_quantile(probability: float, dof: float) -> float:
    """The ``probability`` quantile of Student's t distribution with ``dof`` degrees of freedom.

    Raises:
        ValueError: ``probability`` outside (0, 1), or ``dof`` not positive.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    from scipy import stats  # imported on use: SciPy takes seconds to import, and only reports need it

    return float(stats.t.ppf(probability, dof))


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
