"""Means with 95 % t-intervals over seeds, and rank correlation.

The t quantile is scipy's (``scipy.special.stdtrit``); ``scipy.stats`` is
not imported because its import alone costs about 3.5 s per process, more
than the reduced benchmark run the test suite makes spends on statistics.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % Student-t interval (half-width 0 for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % interval of independent per-seed values."""
    if not values:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 1)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    half = float(stdtrit(len(values) - 1, 0.975)) * sem
    return Interval(mean, mean - half, mean + half, len(values))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (as scipy's rankdata)."""
    data = np.asarray(values, dtype=float)
    order = np.argsort(data, kind="stable")
    ranks = np.empty(len(data))
    ranks[order] = np.arange(1, len(data) + 1)
    _, inverse = np.unique(data, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); 0 when
    either side is constant."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return float(np.corrcoef(average_ranks(xs), average_ranks(ys))[0, 1])
