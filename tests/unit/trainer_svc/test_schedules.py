"""Learning-rate schedules and FLIQS' cosine entropy schedule."""

from __future__ import annotations

import itertools
import math

import pytest

from bitmesh.errors import InvalidArgument
from trainer_svc.schedules import cosine_entropy_beta, learning_rate

pytestmark = pytest.mark.unit


def test_entropy_weight_is_zero_until_the_delay_then_rises_to_the_maximum() -> None:
    total, delay, top = 400, 100, 3.0
    assert [cosine_entropy_beta(t, total, delay, top) for t in (0, 50, 99, 100)] == [0.0] * 4
    assert cosine_entropy_beta(250, total, delay, top) == pytest.approx(top / 2)
    assert cosine_entropy_beta(400, total, delay, top) == pytest.approx(top)
    assert cosine_entropy_beta(500, total, delay, top) == pytest.approx(top)  # stays there
    values = [cosine_entropy_beta(t, total, delay, top) for t in range(100, 401)]
    assert all(b >= a for a, b in itertools.pairwise(values))  # monotone


def test_entropy_weight_follows_the_formula() -> None:
    t, total, delay, top = 170, 300, 60, 2.0
    expected = top * (1 - math.cos(math.pi * (t - delay) / (total - delay))) / 2
    assert cosine_entropy_beta(t, total, delay, top) == pytest.approx(expected)


def test_learning_rate_schedules() -> None:
    assert learning_rate("constant", 0.1, 77, 100) == 0.1
    assert learning_rate("cosine", 0.1, 0, 100) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 100, 100) == pytest.approx(0.0, abs=1e-12)
    steps = [learning_rate("step", 1.0, t, 100) for t in (0, 49, 50, 74, 75, 99)]
    assert steps == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(InvalidArgument):
        learning_rate("linear", 0.1, 0, 10)
