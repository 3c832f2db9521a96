"""Schedules over the steps of a job: learning rate and the entropy penalty."""

from __future__ import annotations

import math

from bitmesh.errors import InvalidArgument

#: Where the step schedule divides the rate by 10 (fractions of the job).
STEP_MILESTONES = (0.5, 0.75)


def learning_rate(schedule: str, base: float, step: int, total: int) -> float:
    """The rate at ``step`` of ``total``: constant, cosine to 0, or x0.1 at 1/2 and 3/4."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    if schedule == "step":
        drops = sum(step >= m * total for m in STEP_MILESTONES)
        return base * 0.1**drops
    raise InvalidArgument(f"unknown learning-rate schedule {schedule!r}")


def cosine_entropy_beta(step: int, total: int, delay: int, beta_max: float) -> float:
    """FLIQS' entropy weight: 0 before ``delay``, then
    beta_max * (1 - cos(pi (t - delay) / (total - delay))) / 2, reaching
    beta_max at ``total`` (and staying there)."""
    if step < delay or total <= delay:
        return 0.0
    progress = min(1.0, (step - delay) / (total - delay))
    return beta_max * (1.0 - math.cos(math.pi * progress)) / 2.0
