"""Means with 95 % t-intervals over seeds, and rank correlation (scipy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


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
    half = float(scipy_stats.t.ppf(0.975, len(values) - 1)) * sem
    return Interval(mean, mean - half, mean + half, len(values))


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation; 0 when either side is constant."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return float(scipy_stats.spearmanr(xs, ys).statistic)
