"""The solver's ceilings refuse on counts, naming the setting to turn."""

from __future__ import annotations

import time

import pytest

from bitmesh.errors import InvalidArgument, ResourceExhausted
from bitmesh.settings import Settings
from bitmesh.v1 import solver_pb2
from solver_svc.convert import problem_from_pb
from solver_svc.limits import SolverLimits, SolveSlots


def _dense_pb(layers: int, wide: int) -> solver_pb2.Problem:
    """``layers`` one-option layers and one layer of ``wide`` options."""
    msg = solver_pb2.Problem()
    for i in range(layers):
        layer = msg.layers.add(name=f"l{i}", parameters=1)
        layer.options.add(key="a").costs.size_bytes = 1.0
    wide_layer = msg.layers.add(name="wide", parameters=1)
    for k in range(wide):
        wide_layer.options.add(key=f"o{k}").costs.size_bytes = float(k)
    return msg


def test_settings_reach_the_limits() -> None:
    limits = SolverLimits.from_settings(
        Settings(solver_max_dense_cells=7, solver_default_time_limit_s=3.0)
    )
    assert limits.max_dense_cells == 7
    assert limits.time_limit(0) == 3.0


def test_the_loaded_options_cap_reads_its_old_name_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """BITMESH_SOLVER_MAX_LOADED_CELLS (the registry counted dense cells) is
    still read; the new name wins when both are set."""
    assert Settings(solver_max_loaded_options=5).solver_max_loaded_options == 5
    monkeypatch.setenv("BITMESH_SOLVER_MAX_LOADED_CELLS", "7")
    assert Settings().solver_max_loaded_options == 7
    monkeypatch.setenv("BITMESH_SOLVER_MAX_LOADED_OPTIONS", "9")
    assert Settings().solver_max_loaded_options == 9


@pytest.mark.parametrize(
    ("limits", "setting"),
    [
        (SolverLimits(max_layers=10), "BITMESH_SOLVER_MAX_LAYERS"),
        (SolverLimits(max_options_per_layer=8), "BITMESH_SOLVER_MAX_OPTIONS_PER_LAYER"),
        (SolverLimits(max_total_options=20), "BITMESH_SOLVER_MAX_TOTAL_OPTIONS"),
    ],
)
def test_each_cap_refuses_with_numbers_and_its_setting(limits: SolverLimits, setting: str) -> None:
    msg = _dense_pb(layers=15, wide=16)
    with pytest.raises(ResourceExhausted, match=setting) as caught:
        problem_from_pb(msg, limits)
    assert "cap is" in caught.value.message
    problem_from_pb(msg, SolverLimits())  # the defaults take it


def test_one_wide_layer_is_not_refused_at_the_door() -> None:
    """20,000 one-option layers and one of 256: small on the wire and stored
    sparse, so no count of the request is over a cap (the dense cells are
    capped on the pruned instance, tests/unit/solver_svc/test_sparse.py)."""
    msg = _dense_pb(layers=19_999, wide=256)
    assert msg.ByteSize() < 1_000_000
    problem = problem_from_pb(msg, SolverLimits(max_dense_cells=1_000))
    assert len(problem.layers) == 20_000


def test_time_limits() -> None:
    limits = SolverLimits(default_time_limit_s=5.0, max_time_limit_s=60.0)
    assert limits.time_limit(0) == 5.0
    assert limits.time_limit(2.5) == 2.5
    assert limits.time_limit(1e9) == 60.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="time_limit_s"):
            limits.time_limit(bad)


def test_frontier_points() -> None:
    limits = SolverLimits(max_frontier_points=50)
    assert limits.frontier_points(0, 20) == 20
    assert limits.frontier_points(50, 20) == 50
    with pytest.raises(ResourceExhausted, match="BITMESH_SOLVER_MAX_FRONTIER_POINTS"):
        limits.frontier_points(51, 20)
    with pytest.raises(InvalidArgument):
        limits.frontier_points(-1, 20)


def test_solve_slots_refuse_past_the_cap_once_the_call_has_no_time_left() -> None:
    slots = SolveSlots(
        SolverLimits.from_settings(Settings(solver_max_concurrent_solves=1)).max_concurrent_solves
    )
    later = time.perf_counter() + 60
    # No time left to wait for the slot: refused at once, naming the setting.
    refused = pytest.raises(ResourceExhausted, match="BITMESH_SOLVER_MAX_CONCURRENT_SOLVES")
    with slots.held(later), refused, slots.held(time.perf_counter()):
        pass
    with slots.held(time.perf_counter()):  # free again: taken without waiting
        pass
