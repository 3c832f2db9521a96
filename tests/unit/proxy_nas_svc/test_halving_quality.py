from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_nas_svc.halving import planned_runs, promotions, survivors_count
from proxy_nas_svc.quality import Quality, full_search_steps, kendall_tau

pytestmark = pytest.mark.unit


def test_top_one_over_eta_go_on_ties_to_the_earlier_trial() -> None:
    scores = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.9, 4: 0.1, 5: 0.3}
    assert promotions(scores, 3) == [1, 3]
    assert promotions(scores, 2) == [1, 3, 2]
    assert promotions({7: 0.2}, 3) == [7]  # at least one
    assert promotions({}, 3) == []


@given(st.dictionaries(st.integers(0, 50), st.floats(0, 1), min_size=1), st.integers(2, 6))
def test_promoted_beat_everyone_left_behind(scores: dict[int, float], eta: int) -> None:
    kept = promotions(scores, eta)
    assert len(kept) == survivors_count(len(scores), eta)
    worst_kept = min(scores[n] for n in kept)
    assert all(scores[n] <= worst_kept for n in scores if n not in kept)


def test_planned_runs_shrink_by_eta() -> None:
    assert planned_runs(27, 4, 3) == [27, 9, 3, 1]
    assert planned_runs(5, 3, 4) == [5, 1, 1]


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1.0], [2.0]) is None
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


def test_compute_accounting() -> None:
    assert full_search_steps(12, 5, 100) == 1200  # exhaustive over a finite space
    assert full_search_steps(None, 5, 100) == 500  # same trials at full fidelity
    quality = Quality(0.5, 3, search_steps=120, full_search_steps=1200, check_steps=300)
    assert quality.compute_ratio == pytest.approx(0.1)
    assert quality.to_dict()["compute_ratio"] == pytest.approx(0.1)
