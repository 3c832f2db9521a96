"""Successive halving by rung: who goes on to the next fidelity.

Synchronous successive halving (Jamieson and Talwalkar; the inner loop of
Hyperband): every configuration runs at rung 0, the top 1/eta of each rung
run at the next one. Pure functions so the rule can be tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

#: A score: a float, or a tuple compared in order (accuracy, then -loss).
S = TypeVar("S", float, tuple[float, float])


def survivors_count(finished: int, eta: int) -> int:
    """How many of ``finished`` configurations go on: floor(n / eta), at least one."""
    if finished <= 0:
        return 0
    return max(1, finished // eta)


def promotions(scores: Mapping[int, S], eta: int) -> list[int]:
    """Trial numbers promoted from a rung, best first.

    Higher scores win; ties go to the earlier trial (a stable sort of the
    numbers), so the rule is deterministic whatever order results arrived in."""
    ranked = sorted(sorted(scores), key=lambda number: scores[number], reverse=True)
    return ranked[: survivors_count(len(ranked), eta)]


def planned_runs(trials: int, rungs: int, eta: int) -> list[int]:
    """Runs per rung when every run succeeds: n, n/eta, n/eta^2, ... (>= 1)."""
    counts = [trials]
    for _ in range(1, rungs):
        counts.append(survivors_count(counts[-1], eta))
    return counts
