"""A problem registered again after a restart comes back with its stored frontiers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitmesh.artifacts import ArtifactStore
from solver_svc.frontier import lookup
from solver_svc.registry import ProblemRegistry
from solver_svc.spec import Budgets
from tests.unit.solver_svc.brute import optimum
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def test_registering_a_stored_problem_loads_its_complete_frontiers(tmp_path: Path) -> None:
    problem = quant_problem(5, seed=41)
    held = Budgets(size_bytes=optimum(problem, {}, "size_bytes") * 1.5)  # type: ignore[operator]
    first = ProblemRegistry(ArtifactStore(str(tmp_path)), background=False)
    loaded = first.register(problem)
    assert first.trace_exhaustive(loaded, "bops", held)
    assert loaded.tracing[("bops", held)] == "done"

    # A restarted service: the client registers the same tables again.
    again = ProblemRegistry(ArtifactStore(str(tmp_path)), background=False)
    reloaded = again.register(problem)
    assert reloaded.problem_id == loaded.problem_id
    assert reloaded.tracing == {("bops", held): "done"}
    assert again.register(problem) is reloaded
    bops_low = optimum(problem, held.to_json(), "bops")
    assert bops_low is not None
    budgets = held.with_limit("bops", bops_low * 1.2)
    answer, _ = lookup(budgets, reloaded.all_frontiers())
    assert answer is not None  # from memory, no new trace
    assert answer.total_omega == pytest.approx(optimum(problem, budgets.to_json()), rel=1e-9)
    # The trace is listed once though it is both traced and stored.
    assert len(reloaded.all_frontiers()) == 1


def test_a_new_problem_starts_with_no_frontiers(tmp_path: Path) -> None:
    registry = ProblemRegistry(ArtifactStore(str(tmp_path)), background=False)
    loaded = registry.register(quant_problem(4, seed=42))
    assert (loaded.frontiers, loaded.traced, loaded.tracing) == ([], {}, {})
    assert registry.get(loaded.problem_id) is loaded
