from __future__ import annotations

import numpy as np
import pytest

from solver_svc.frontier import Frontier, frontier, what_if
from solver_svc.solve import BudgetsInfeasible, ProblemSolver
from solver_svc.spec import Budgets
from tests.unit.solver_svc.brute import enumerate_all, optimum
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def _pareto(omega: np.ndarray, cost: np.ndarray) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for c, o in sorted(zip(cost.tolist(), omega.tolist(), strict=True)):
        if not out or o < out[-1][1] - 1e-12:
            out.append((c, o))
    return out


def test_frontier_points_are_optimal_at_their_limits_and_pareto() -> None:
    problem = quant_problem(7, seed=11)
    solver = ProblemSolver(problem)
    constraints = Budgets(latency_ms=optimum(problem, {}, "latency_ms") * 1.6)  # type: ignore[operator]
    fr = frontier(solver, "bops", constraints, points=12)
    assert fr.low == pytest.approx(optimum(problem, constraints.to_json(), "bops"))
    costs = [p.totals.bops for p in fr.points]
    omegas = [p.total_omega for p in fr.points]
    assert costs == sorted(costs) and omegas == sorted(omegas, reverse=True)
    assert len(set(omegas)) == len(omegas)
    for limit, index in fr.probes:
        expected = optimum(problem, {**constraints.to_json(), "bops": limit})
        assert fr.points[index].total_omega == pytest.approx(expected, rel=1e-9)
        assert fr.points[index].totals.bops <= limit * (1 + 1e-9)


def test_exhaustive_frontier_is_the_whole_pareto_set() -> None:
    problem = quant_problem(5, seed=12)
    fr = frontier(ProblemSolver(problem), "size_bytes", exhaustive=True)
    assert fr.complete
    _, totals = enumerate_all(problem)
    expected = _pareto(totals["omega"], totals["size_bytes"])
    got = [(p.totals.size_bytes, p.total_omega) for p in fr.points]
    assert len(got) == len(expected)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-9)


@pytest.mark.parametrize("exhaustive", [False, True])
def test_what_if_matches_direct_solve(exhaustive: bool) -> None:
    problem = quant_problem(6, seed=13)
    solver = ProblemSolver(problem)
    fr = frontier(solver, "size_bytes", points=6, exhaustive=exhaustive)
    rng = np.random.default_rng(0)
    sources = set()
    limits = list(rng.uniform(fr.low, fr.high, 25)) + [lim for lim, _ in fr.probes] + [fr.high * 2]
    for limit in limits:
        sol = what_if(solver, Budgets(size_bytes=float(limit)), [fr])
        sources.add(sol.answered_from)
        assert sol.total_omega == pytest.approx(
            optimum(problem, {"size_bytes": float(limit)}), rel=1e-9
        )
        assert sol.status == "optimal"
    assert "frontier" in sources
    if exhaustive:
        assert sources == {"frontier"}
    else:
        assert "solve" in sources  # some limits fall between probes where the optimum steps


def test_what_if_below_the_least_achievable_is_infeasible() -> None:
    problem = quant_problem(4, seed=14)
    solver = ProblemSolver(problem)
    fr = frontier(solver, "bops", points=3)
    with pytest.raises(BudgetsInfeasible, match="least achievable"):
        what_if(solver, Budgets(bops=fr.low * 0.5), [fr])


def test_what_if_with_other_budgets_solves() -> None:
    problem = quant_problem(5, seed=15)
    solver = ProblemSolver(problem)
    fr = frontier(solver, "bops", points=4)
    budgets = Budgets(bops=fr.high, size_bytes=optimum(problem, {}, "size_bytes") * 1.2)  # type: ignore[operator]
    sol = what_if(solver, budgets, [fr])
    assert sol.answered_from == "solve"
    assert sol.total_omega == pytest.approx(optimum(problem, budgets.to_json()), rel=1e-9)


def test_frontier_json_round_trip() -> None:
    problem = quant_problem(4, seed=16)
    solver = ProblemSolver(problem)
    fr = frontier(solver, "latency_ms", points=4)
    back = Frontier.from_json(fr.to_json())
    assert back.probes == fr.probes and back.least_achievable == fr.least_achievable
    assert [p.assignment for p in back.points] == [p.assignment for p in fr.points]
    limit = (fr.low + fr.high) / 2
    assert what_if(solver, Budgets(latency_ms=limit), [back]).total_omega == pytest.approx(
        what_if(solver, Budgets(latency_ms=limit), [fr]).total_omega
    )


def test_exhaustive_frontier_steps_past_the_feasibility_tolerance() -> None:
    """BOPs totals of the Pareto points are far below the sum of every layer's
    largest BOPs, which sets the feasibility tolerance: each next limit must
    step past that tolerance, else the walk finds the same point again."""
    problem = quant_problem(5, seed=21)
    solver = ProblemSolver(problem)
    constraints = Budgets(size_bytes=optimum(problem, {}, "size_bytes") * 1.5)  # type: ignore[operator]
    fr = frontier(solver, "bops", constraints, exhaustive=True, time_limit_s=60)
    assert fr.complete
    _, totals = enumerate_all(problem)
    ok = totals["size_bytes"] <= constraints.size_bytes * (1 + 1e-9)  # type: ignore[operator]
    expected = _pareto(totals["omega"][ok], totals["bops"][ok])
    got = [(p.totals.bops, p.total_omega) for p in fr.points]
    assert len(got) == len(expected)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-9)


def test_sweep_skips_limits_a_looser_optimum_already_meets() -> None:
    problem = quant_problem(3, seed=22)  # 64 configurations: few Pareto points
    solver = ProblemSolver(problem)
    calls = []
    original = solver.solve

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    solver.solve = counting  # type: ignore[method-assign]
    fr = frontier(solver, "bops", points=60)
    _, totals = enumerate_all(problem)
    pareto = _pareto(totals["omega"], totals["bops"])
    assert len(calls) <= len(pareto) + 2  # ends + at most one solve per Pareto step
    for limit, index in fr.probes:
        assert fr.points[index].total_omega == pytest.approx(
            optimum(problem, {"bops": limit}), rel=1e-9
        )


def test_points_the_time_cut_short_prove_nothing_to_what_if() -> None:
    """A stored point that is only FEASIBLE (its solve hit the deadline) is
    never served by ``lookup`` as optimal, where the same point proven is."""
    from dataclasses import replace

    from solver_svc.frontier import _assemble, lookup

    problem = quant_problem(6, seed=3)
    solver = ProblemSolver(problem)
    loose = solver.solve(Budgets())
    limit = loose.totals.bops
    for status, served in (("optimal", True), ("feasible", False)):
        point = replace(loose, status=status, gap=0.5, lower_bound=loose.total_omega / 2)
        fr = _assemble("bops", Budgets(), [(limit, point)], limit / 2, limit, False, 0.0)
        answer, _ = lookup(Budgets(bops=limit), [fr])
        assert (answer is not None) is served, status
