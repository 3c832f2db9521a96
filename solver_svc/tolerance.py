"""The numeric tolerances every engine and every test share, in one place.

All arithmetic is in float64 on the caller's numbers (no rounding to a grid):

- A budget row is met when ``total <= limit + FEAS_RTOL * scale`` where
  ``scale = max(|limit|, sum over groups of the largest |coefficient|)``.
  Summation order alone moves a float64 total by far less (about 1e-13
  relative for 10^4 terms), so a configuration exactly at a limit is feasible
  whichever engine summed it.
- Objective values within ``OBJ_RTOL * scale`` of each other are equal:
  "optimal" means no feasible configuration is better by more than that.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FEAS_RTOL", "OBJ_RTOL", "feasibility_slack", "objective_slack"]

FEAS_RTOL = 1e-9
OBJ_RTOL = 1e-9


def feasibility_slack(limits: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Per-row absolute slack; ``coefficients`` is ``[rows, groups, options]``."""
    if coefficients.size == 0:
        scale = np.abs(limits)
    else:
        scale = np.maximum(np.abs(limits), np.abs(coefficients).max(axis=2).sum(axis=1))
    return FEAS_RTOL * np.maximum(scale, 1e-300)


def objective_slack(objective: np.ndarray, valid: np.ndarray) -> float:
    """Absolute objective tolerance for ``objective`` (``[groups, options]``)."""
    if objective.size == 0:
        return 1e-300
    mags = np.where(valid, np.abs(objective), 0.0).max(axis=1).sum()
    return float(OBJ_RTOL * max(mags, 1e-300))
