"""Registered problems: background exhaustive traces and what-if from memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitmesh.artifacts import ArtifactStore
from bitmesh.v1 import common_pb2, solver_pb2
from solver_svc.frontier import lookup
from solver_svc.registry import ProblemRegistry
from solver_svc.servicer import SolverServicer
from solver_svc.spec import Budgets
from tests.unit.solver_svc.brute import optimum
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def _registry(tmp_path: Path) -> ProblemRegistry:
    return ProblemRegistry(ArtifactStore(str(tmp_path)), background=False)


def test_a_one_limit_sweep_starts_an_exhaustive_trace(tmp_path: Path) -> None:
    problem = quant_problem(6, seed=31)
    registry = _registry(tmp_path)
    loaded = registry.register(problem)
    held = Budgets(size_bytes=optimum(problem, {}, "size_bytes") * 1.4)  # type: ignore[operator]
    bops_low = optimum(problem, held.to_json(), "bops")
    assert bops_low is not None
    registry.note_what_if(loaded, held.with_limit("bops", bops_low * 2))
    registry.note_what_if(loaded, held.with_limit("bops", bops_low * 2))  # same query again
    assert loaded.tracing == {}
    registry.note_what_if(loaded, held.with_limit("bops", bops_low * 3))
    assert loaded.tracing == {("bops", held): "done"}
    traced = loaded.traced[("bops", held)]
    assert traced.complete
    rng = np.random.default_rng(0)
    for limit in rng.uniform(bops_low, traced.high * 1.1, 40):
        budgets = held.with_limit("bops", float(limit))
        answer, _ = lookup(budgets, loaded.all_frontiers())
        assert answer is not None  # from memory
        assert answer.total_omega == pytest.approx(optimum(problem, budgets.to_json()), rel=1e-9)
    # A restarted service loads the stored complete frontier.
    again = ProblemRegistry(ArtifactStore(str(tmp_path)), background=False).get(loaded.problem_id)
    assert ("bops", held) in again.traced


def test_close_stops_a_running_trace(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    loaded = registry.register(quant_problem(6, seed=32))
    registry.close()
    assert registry.trace_exhaustive(loaded, "bops", Budgets())
    assert loaded.tracing[("bops", Budgets())] == "stopped"
    assert not loaded.traced[("bops", Budgets())].complete


def _problem_pb(seed: int) -> solver_pb2.Problem:
    problem = quant_problem(5, seed=seed)
    return solver_pb2.Problem(
        layers=[
            solver_pb2.ProblemLayer(
                name=layer.name,
                parameters=layer.parameters,
                options=[
                    solver_pb2.ProblemOption(
                        key=o.key,
                        omega=o.omega,
                        weight_bits=int(o.weight_bits),
                        costs=common_pb2.LayerCosts(size_bytes=o.size_bytes, bops=o.bops),
                    )
                    for o in layer.options
                ],
            )
            for layer in problem.layers
        ]
    )


def test_servicer_what_if_answers_from_memory_after_a_sweep(tmp_path: Path) -> None:
    servicer = SolverServicer(_registry(tmp_path))
    message = _problem_pb(33)
    pid = servicer.RegisterProblem(
        solver_pb2.RegisterProblemRequest(problem=message),
        None,  # type: ignore[arg-type]
    ).problem_id
    problem = servicer.registry.get(pid).solver.problem
    low = optimum(problem, {}, "size_bytes")
    assert low is not None
    sources = []
    for factor in (1.1, 1.3, 1.2, 1.7, 1.05, 2.5):
        limit = low * factor
        answer = servicer.WhatIf(
            solver_pb2.WhatIfRequest(
                problem_id=pid, budgets=common_pb2.Budgets(max_size_bytes=limit)
            ),
            None,  # type: ignore[arg-type]
        )
        sources.append(answer.answered_from)
        assert answer.status == solver_pb2.SOLVE_STATUS_OPTIMAL
        assert answer.total_omega == pytest.approx(
            optimum(problem, {"size_bytes": limit}), rel=1e-9
        )
        assert answer.totals.size_bytes <= limit * (1 + 1e-9)
    assert sources[0] == "solve" and set(sources[2:]) == {"frontier"}


def test_loaded_problems_are_bounded_by_their_stored_options(tmp_path: Path) -> None:
    """Past the options cap the least recently used problem leaves memory (the
    newest always stays) and comes back from the artifact store."""
    problems = [quant_problem(6, seed=40 + i) for i in range(3)]
    options = ProblemRegistry(ArtifactStore(str(tmp_path))).register(problems[0])
    per_problem = options.solver.prepared.num_options
    assert per_problem == sum(len(layer.options) for layer in problems[0].layers)
    registry = ProblemRegistry(
        ArtifactStore(str(tmp_path)), background=False, max_loaded_options=2 * per_problem
    )
    first, second, third = (registry.register(p) for p in problems)
    with registry._lock:
        assert list(registry._loaded) == [second.problem_id, third.problem_id]
        assert registry.loaded_options() <= 2 * per_problem
    again = registry.get(first.problem_id)  # from the artifact store
    assert again is not first and again.solver.problem == first.solver.problem
    with registry._lock:
        assert list(registry._loaded) == [third.problem_id, first.problem_id]
    tiny = ProblemRegistry(ArtifactStore(str(tmp_path)), background=False, max_loaded_options=1)
    assert tiny.register(problems[0]).solver.prepared.num_options > 1  # the newest stays
