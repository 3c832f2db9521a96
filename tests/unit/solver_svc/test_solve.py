from __future__ import annotations

import pytest

from bitmesh.errors import FailedPrecondition, InvalidArgument
from solver_svc.problem import LayerChoice, OptionCost, Problem
from solver_svc.solve import BudgetsInfeasible, ProblemSolver, solve
from solver_svc.spec import Budgets
from tests.unit.solver_svc.brute import optimum
from tests.unit.solver_svc.helpers import quant_problem, total

pytestmark = pytest.mark.unit


def test_infeasible_budget_names_axis_and_least_achievable() -> None:
    problem = quant_problem(6, seed=3)
    least_size = optimum(problem, {"bops": 1e30}, "size_bytes")
    assert least_size is not None
    with pytest.raises(BudgetsInfeasible) as info:
        solve(problem, Budgets(size_bytes=least_size * 0.9))
    assert isinstance(info.value, FailedPrecondition)
    (violation,) = info.value.violations
    assert violation.axis == "size_bytes"
    assert violation.least_achievable == pytest.approx(least_size)
    assert "size_bytes" in info.value.message and "least achievable" in info.value.message


def test_least_achievable_is_under_the_other_budgets() -> None:
    problem = quant_problem(6, seed=4)
    bops_cap = optimum(problem, {}, "bops") * 1.5  # type: ignore[operator]
    least = optimum(problem, {"bops": bops_cap}, "size_bytes")
    assert least is not None
    with pytest.raises(BudgetsInfeasible) as info:
        solve(problem, Budgets(size_bytes=least * 0.99, bops=bops_cap))
    by_axis = {v.axis: v for v in info.value.violations}
    assert by_axis["size_bytes"].least_achievable == pytest.approx(least)


def test_unmeetable_omega_bound_in_reverse_objective() -> None:
    problem = quant_problem(5, seed=5)
    best_omega = optimum(problem, {})
    assert best_omega is not None
    with pytest.raises(BudgetsInfeasible, match="omega"):
        solve(problem, Budgets(omega=best_omega - 1.0), objective="size_bytes")


def test_reverse_objective_minimises_cost_under_omega_bound() -> None:
    problem = quant_problem(7, seed=6)
    bound = optimum(problem, {"size_bytes": optimum(problem, {}, "size_bytes") * 1.3})  # type: ignore[operator]
    assert bound is not None
    sol = solve(problem, Budgets(omega=bound), objective="size_bytes")
    assert sol.total_omega <= bound * (1 + 1e-9)
    assert sol.totals.size_bytes == pytest.approx(optimum(problem, {"omega": bound}, "size_bytes"))
    assert sol.objective_value == pytest.approx(sol.totals.size_bytes)


def test_solution_reports_totals_of_its_assignment() -> None:
    problem = quant_problem(8, seed=7)
    sol = solve(
        problem,
        Budgets(bops=total(problem, {layer.name: "w4a8" for layer in problem.layers}, "bops")),
    )
    for axis in ("size_bytes", "bops", "latency_ms"):
        assert getattr(sol.totals, axis) == pytest.approx(
            total(problem, dict(sol.assignment), axis)
        )
    assert sol.status == "optimal" and sol.gap == 0.0 and sol.seconds > 0
    assert sol.engine.startswith("bb") and sol.answered_from == "solve"


@pytest.mark.parametrize("seed", range(4))
def test_cross_check_engines_agree(seed: int) -> None:
    problem = quant_problem(12, seed=seed)
    all4 = {layer.name: "w4a4" for layer in problem.layers}
    all8 = {layer.name: "w8a8" for layer in problem.layers}
    budgets = Budgets(
        size_bytes=(total(problem, all4, "size_bytes") + total(problem, all8, "size_bytes")) / 2,
        latency_ms=(total(problem, all4, "latency_ms") * 2 + total(problem, all8, "latency_ms"))
        / 3,
    )
    sol = solve(problem, budgets, cross_check=True)
    assert sol.extra["cross_check"]["agree"], sol.extra["cross_check"]


def test_hint_does_not_change_the_answer() -> None:
    problem = quant_problem(10, seed=8)
    budgets = Budgets(
        size_bytes=total(problem, {layer.name: "w4a8" for layer in problem.layers}, "size_bytes")
    )
    plain = solve(problem, budgets)
    hinted = solve(problem, budgets, hint={layer.name: "w2a4" for layer in problem.layers})
    assert hinted.total_omega == pytest.approx(plain.total_omega, rel=1e-9)


def test_average_weight_bits_budget() -> None:
    layers = tuple(
        LayerChoice(
            f"l{i}",
            parameters=p,
            options=(
                OptionCost("w4", omega=10.0 / p, size_bytes=p / 2, bops=0.0, weight_bits=4.0),
                OptionCost("w8", omega=0.0, size_bytes=p, bops=0.0, weight_bits=8.0),
            ),
        )
        for i, p in enumerate((100, 300, 600))
    )
    sol = solve(Problem(layers=layers), Budgets(avg_weight_bits=6.0))
    assert sol.avg_weight_bits <= 6.0 + 1e-9
    # Only the 600-weight layer can go to 4 bits alone: (100*8+300*8+600*4)/1000 = 5.6.
    assert sol.assignment == {"l0": "w8", "l1": "w8", "l2": "w4"}


def test_bad_requests() -> None:
    problem = quant_problem(3, seed=0)
    with pytest.raises(InvalidArgument, match="engine"):
        solve(problem, engine="glpk")
    with pytest.raises(InvalidArgument, match="objective"):
        solve(problem, objective="accuracy")
    with pytest.raises(InvalidArgument, match="finite"):
        Budgets(size_bytes=float("nan"))
    with pytest.raises(InvalidArgument, match=">= 0"):
        Budgets(bops=-1.0)
    with pytest.raises(InvalidArgument, match="time_limit_s"):
        ProblemSolver(problem).solve(time_limit_s=0)
