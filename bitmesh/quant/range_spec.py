"""Which activation range estimator a quantizer uses: :class:`RangeEstimator`,
validated, with no torch (the estimators themselves: ``range_estimators.py``).

Why a module of its own: training requests carry one, and the trainer's
service edge (``trainer_svc.specs`` / ``convert``) reads and answers them
without loading torch (seconds of CPU at a service's first Get call).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitmesh.errors import InvalidArgument

__all__ = ["ESTIMATOR_NAMES", "RangeEstimator"]

#: The estimators ``range_estimators.py`` implements (METHODS.md section 7).
ESTIMATOR_NAMES: tuple[str, ...] = ("minmax", "ema", "percentile")


@dataclass(frozen=True)
class RangeEstimator:
    """Which estimator to use and its parameters (``momentum`` for ema and
    percentile, ``percentile`` in (0, 100] for percentile)."""

    name: str = "minmax"
    momentum: float = 0.95
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if self.name not in ESTIMATOR_NAMES:
            raise InvalidArgument(
                f"unknown activation range estimator {self.name!r}; "
                f"use one of {', '.join(ESTIMATOR_NAMES)}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise InvalidArgument(f"range momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.percentile <= 100.0:
            raise InvalidArgument(f"range percentile must be in (0, 100], got {self.percentile}")
