"""Statistics shared by the stages: intervals of episode returns (the stages that score policies)
and a cluster bootstrap for figures pooled over clips that come in episodes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); nan below 2 values."""
    n = len(values)
    if n < 2:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def cluster_resamples(clusters: Sequence, n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` bootstrap resamples of whole clusters, each as the row indices it draws:
    ``clusters[i]`` names row i's cluster (an episode, whose rows are not independent of each
    other); as many clusters are drawn, with replacement, as there are."""
    clusters = np.asarray(clusters)
    names = np.unique(clusters)
    if len(names) < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 clusters, got {len(names)}")
    members = [np.flatnonzero(clusters == c) for c in names]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])


def cluster_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], clusters: Sequence[int], n: int = 2000,
                      seed: int = 0) -> np.ndarray:
    """Percentile 95 % intervals, shape (2, *statistic's shape), of ``statistic(rows)`` over
    ``cluster_resamples``. The same resamples for every entry of the statistic, so the
    differences it returns are paired."""
    draws = np.stack([np.asarray(statistic(rows)) for rows in cluster_resamples(clusters, n, seed)])
    return np.percentile(draws, [2.5, 97.5], axis=0)
