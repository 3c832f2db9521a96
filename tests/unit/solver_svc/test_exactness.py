"""The solver's optimum equals brute-force enumeration on random small problems.

Problems of up to 10 layers x 4 options with up to 3 budgets (plus ties, pins,
negative Omega and the reverse objective) are drawn by hypothesis with a fixed
seed; both engines must match the enumeration.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from solver_svc.solve import BudgetsInfeasible, ProblemSolver
from solver_svc.spec import Budgets
from tests.unit.solver_svc.brute import AXES, enumerate_all, optimum
from tests.unit.solver_svc.helpers import SETTINGS

pytestmark = pytest.mark.unit


@st.composite
def problems(
    draw: st.DrawFn, max_layers: int = 10, max_options: int = 4
) -> tuple[Problem, dict[str, float]]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_layers = draw(st.integers(1, max_layers))
    num_options = draw(st.integers(1, max_options))
    # Keep the enumeration small enough for a quick test.
    while num_options**num_layers > 300_000:
        num_layers -= 1
    integer_costs = draw(st.booleans())  # ties in costs are the hard cases
    layers = []
    for i in range(num_layers):
        options = []
        for k in range(num_options):

            def cost() -> float:
                return float(rng.integers(0, 6)) if integer_costs else float(rng.random() * 10)

            options.append(
                OptionCost(
                    key=f"o{k}",
                    omega=float(rng.normal()) if not integer_costs else float(rng.integers(-3, 6)),
                    size_bytes=cost(),
                    bops=cost(),
                    latency_ms=cost(),
                    weight_bits=float(rng.choice([2, 4, 8])),
                )
            )
        layers.append(
            LayerChoice(name=f"l{i}", parameters=int(rng.integers(0, 50)), options=tuple(options))
        )
    ties: list[tuple[str, ...]] = []
    if num_layers >= 2 and draw(st.booleans()):
        a, b = rng.choice(num_layers, size=2, replace=False)
        ties.append((f"l{a}", f"l{b}"))
    pins: list[tuple[str, tuple[str, ...]]] = []
    if num_options >= 2 and draw(st.booleans()):
        layer = int(rng.integers(num_layers))
        pins.append(
            (f"l{layer}", tuple(f"o{k}" for k in rng.choice(num_options, size=2, replace=False)))
        )
    fixed = FixedCosts(
        size_bytes=float(rng.integers(0, 3)),
        bops=1.0,
        latency_ms=0.5,
        parameters=10,
        weight_bits=8.0,
    )
    problem = Problem(layers=tuple(layers), fixed=fixed, ties=tuple(ties), pins=tuple(pins))
    # Budgets at the totals of random configurations (sometimes exactly on one).
    _, totals = enumerate_all(problem)
    budgets: dict[str, float] = {}
    for axis in draw(st.lists(st.sampled_from(AXES[:4]), max_size=3, unique=True)):
        pick = totals[axis][int(rng.integers(len(totals[axis])))]
        budgets[axis] = float(pick * (1.0 if draw(st.booleans()) else rng.uniform(0.7, 1.3)))
    return problem, budgets


def _check(problem: Problem, budgets: dict[str, float], objective: str, engine: str) -> None:
    expected = optimum(problem, budgets, objective)
    solver = ProblemSolver(problem)
    try:
        sol = solver.solve(Budgets(**budgets), objective=objective, engine=engine)
    except BudgetsInfeasible:
        assert expected is None, f"solver says infeasible, enumeration found {expected}"
        return
    assert expected is not None, "solver found a configuration the enumeration rejects"
    got = sol.axis_value(objective)
    scale = max(1.0, abs(expected))
    assert abs(got - expected) <= 1e-7 * scale, (got, expected)
    assert sol.status == "optimal"
    # The reported totals are those of the returned assignment, and it is feasible.
    options = {layer.name: {o.key: o for o in layer.options} for layer in problem.layers}
    omega = sum(options[name][key].omega for name, key in sol.assignment.items())
    assert abs(omega - sol.total_omega) <= 1e-9 * max(1.0, abs(omega))
    for axis, limit in budgets.items():
        assert sol.axis_value(axis) <= limit + 1e-8 * max(1.0, abs(limit))


@SETTINGS
@given(problems())
def test_bb_matches_enumeration(case: tuple[Problem, dict[str, float]]) -> None:
    _check(*case, objective="omega", engine="bb")


@SETTINGS
@given(problems(max_layers=7))
def test_cpsat_matches_enumeration(case: tuple[Problem, dict[str, float]]) -> None:
    _check(*case, objective="omega", engine="cpsat")


@SETTINGS
@given(problems(max_layers=8), st.sampled_from(["size_bytes", "bops", "latency_ms"]))
def test_reverse_objective_matches_enumeration(
    case: tuple[Problem, dict[str, float]], objective: str
) -> None:
    problem, budgets = case
    budgets = {k: v for k, v in budgets.items() if k != objective}
    _, totals = enumerate_all(problem)
    budgets["omega"] = float(np.median(totals["omega"]))
    _check(problem, budgets, objective, "bb")
