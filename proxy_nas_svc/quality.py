"""How good and how cheap the proxy was: ranking agreement and compute.

Compute is counted in training steps (each step is one batch forward and
backward at the request's batch size, whatever the data fraction), so the
figures do not depend on the machine or on how busy it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def order_positions(values: Sequence[tuple[float, ...]]) -> list[float]:
    """Each value's position in the sorted distinct values (equal values, equal
    positions): lexicographic scores as numbers Kendall's tau can rank."""
    positions = {v: float(i) for i, v in enumerate(sorted(set(values)))}
    return [positions[v] for v in values]


def kendall_tau(proxy: Sequence[float], full: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings of the same configurations.

    None when it is undefined: fewer than two pairs, or a ranking with every
    score tied (scipy returns NaN there)."""
    if len(proxy) != len(full):
        raise ValueError(f"rankings differ in length: {len(proxy)} and {len(full)}")
    if len(proxy) < 2:
        return None
    from scipy.stats import kendalltau

    tau = float(kendalltau(proxy, full).statistic)
    return None if math.isnan(tau) else tau


def full_search_steps(space_size: int | None, trials: int, full_steps: int) -> int:
    """Steps of a full-fidelity search of the same space: every configuration
    of a finite space (exhaustive), else the same number of trials, each at
    full fidelity."""
    configurations = space_size if space_size is not None else trials
    return configurations * full_steps


@dataclass(frozen=True)
class Quality:
    """The proxy's quality figures (``kendall_tau`` None: not measured)."""

    kendall_tau: float | None
    full_fidelity_trials: int
    search_steps: int
    full_search_steps: int
    check_steps: int

    @property
    def compute_ratio(self) -> float:
        return self.search_steps / self.full_search_steps if self.full_search_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compute_ratio": self.compute_ratio}
