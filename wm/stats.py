"""Statistics of episode returns shared by the stages that score policies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); nan below 2 values."""
    n = len(values)
    if n < 2:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
