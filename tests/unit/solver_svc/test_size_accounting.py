"""Size budgets count the scales (issue 18), unless the problem says weights only.

The problem is shaped like a block-format search: per layer an MXFP4-like
option (4 bits + 1/4 bit of scales per weight), an INT4-g32-like one (4 + 1/2)
and an 8-bit one, so a budget between "codes only" and "codes plus scales"
tells the two accountings apart. Every answer is checked against an
enumeration that sums the tables itself.
"""

from __future__ import annotations

import itertools

import pytest

from bitmesh.v1 import common_pb2
from solver_svc.convert import problem_from_pb, solution_to_pb
from solver_svc.frontier import frontier
from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from solver_svc.solve import BudgetsInfeasible, ProblemSolver
from solver_svc.spec import Budgets

pytestmark = pytest.mark.unit

PARAMS = (4096, 8192, 2048)
#: key -> (element bits, scale bits per weight, Omega per weight)
OPTIONS = {"mxfp4": (4, 0.25, 3.0), "int4_g32": (4, 0.5, 2.0), "int8": (8, 32 / 512, 0.1)}


def problem(accounting: str = "weights_and_scales") -> Problem:
    layers = tuple(
        LayerChoice(
            name=f"l{i}",
            parameters=p,
            options=tuple(
                OptionCost(
                    key=key,
                    omega=omega * p * (i + 1),
                    size_bytes=p * bits / 8,
                    bops=float(p * bits * 8),
                    weight_bits=float(bits),
                    scale_bytes=p * scale / 8,
                )
                for key, (bits, scale, omega) in OPTIONS.items()
            ),
        )
        for i, p in enumerate(PARAMS)
    )
    fixed = FixedCosts(size_bytes=1000.0, scale_bytes=64.0, parameters=2000, weight_bits=4.0)
    return Problem(layers=layers, fixed=fixed, size_accounting=accounting)  # type: ignore[arg-type]


def enumerate_best(prob: Problem, limit: float, with_scales: bool) -> tuple[float, float]:
    """(least Omega, its budgeted bytes) over every assignment within ``limit``."""
    best = (float("inf"), 0.0)
    for choice in itertools.product(*(layer.options for layer in prob.layers)):
        size = prob.fixed.size_bytes + sum(o.size_bytes for o in choice)
        if with_scales:
            size += prob.fixed.scale_bytes + sum(o.scale_bytes for o in choice)
        omega = sum(o.omega for o in choice)
        if size <= limit and omega < best[0]:
            best = (omega, size)
    return best


def test_the_size_budget_counts_scales_by_default() -> None:
    codes_at_4 = 1000 + sum(PARAMS) * 4 / 8
    scales_mx = 64 + sum(PARAMS) * 0.25 / 8
    # Room for every layer at 4-bit codes, but not for MXFP4's scales too.
    limit = codes_at_4 + scales_mx / 2
    with pytest.raises(BudgetsInfeasible, match="size_bytes"):
        ProblemSolver(problem()).solve(Budgets(size_bytes=limit))
    loose = codes_at_4 + scales_mx + 300
    sol = ProblemSolver(problem()).solve(Budgets(size_bytes=loose))
    assert sol.totals.size_accounting == "weights_and_scales"
    assert sol.totals.total_bytes <= loose
    assert sol.axis_value("size_bytes") == sol.totals.total_bytes
    assert sol.total_omega == pytest.approx(enumerate_best(problem(), loose, True)[0])


def test_weights_only_restores_hawq_budgets_and_says_so() -> None:
    codes_at_4 = 1000 + sum(PARAMS) * 4 / 8
    limit = codes_at_4 + 10
    sol = ProblemSolver(problem("weights_only")).solve(Budgets(size_bytes=limit))
    assert sol.totals.size_accounting == "weights_only"
    assert sol.totals.size_bytes <= limit < sol.totals.total_bytes
    assert sol.axis_value("size_bytes") == sol.totals.size_bytes
    assert sol.total_omega == pytest.approx(
        enumerate_best(problem("weights_only"), limit, False)[0]
    )


def test_average_bits_count_the_scales() -> None:
    mx = {f"l{i}": "mxfp4" for i in range(len(PARAMS))}
    total_params = sum(PARAMS) + 2000
    with_scales = (sum(PARAMS) * 4.25 + 2000 * 4 + 64 * 8) / total_params
    # Counting scales, only all-MXFP4 fits (INT4-g32 carries more scale bits).
    sol = ProblemSolver(problem()).solve(Budgets(avg_weight_bits=with_scales + 1e-9))
    assert sol.assignment == mx
    assert sol.avg_weight_bits == pytest.approx(with_scales, rel=1e-12)
    with pytest.raises(BudgetsInfeasible):
        ProblemSolver(problem()).solve(Budgets(avg_weight_bits=4.2))
    # Codes only: every 4-bit option is 4.0, and the least Omega (INT4-g32) wins.
    sol = ProblemSolver(problem("weights_only")).solve(Budgets(avg_weight_bits=4.0))
    assert sol.assignment == {name: "int4_g32" for name in mx}
    assert sol.avg_weight_bits == pytest.approx(4.0, rel=1e-12)


def test_frontier_points_are_priced_with_scales() -> None:
    prob = problem()
    points = frontier(ProblemSolver(prob), "size_bytes", Budgets(), points=6).points
    assert len(points) >= 2
    for point in points:
        assert point.axis_value("size_bytes") == point.totals.total_bytes
        best, _ = enumerate_best(prob, point.totals.total_bytes + 1e-9, True)
        assert point.total_omega == pytest.approx(best)


def test_the_accounting_crosses_the_wire() -> None:
    from solver_svc.problem import Problem as DomainProblem

    prob = problem("weights_only")
    assert DomainProblem.from_json(prob.to_json()) == prob
    assert prob.content_hash() != problem().content_hash()
    sol = ProblemSolver(prob).solve(Budgets(size_bytes=1e9))
    message = solution_to_pb(sol, prob)
    assert message.size_accounting == common_pb2.SIZE_ACCOUNTING_WEIGHTS_ONLY
    assert message.totals.scale_bytes == sol.totals.scale_bytes
    from bitmesh.v1 import solver_pb2

    wire = solver_pb2.Problem(size_accounting=common_pb2.SIZE_ACCOUNTING_WEIGHTS_ONLY)
    layer = wire.layers.add(name="a", parameters=10)
    layer.options.add(key="int4", costs=common_pb2.LayerCosts(size_bytes=5, scale_bytes=1))
    assert problem_from_pb(wire).size_accounting == "weights_only"
    wire.size_accounting = common_pb2.SIZE_ACCOUNTING_UNSPECIFIED
    assert problem_from_pb(wire).size_accounting == "weights_and_scales"
