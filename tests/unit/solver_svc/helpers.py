"""Small problem builders shared by the solver tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from solver_svc.core_search import Core, build_core
from solver_svc.dual import lagrangian, lp_dual
from solver_svc.presolve import Instance
from solver_svc.problem import LayerChoice, OptionCost, Problem
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets
from solver_svc.tolerance import feasibility_slack
from tests.unit.solver_svc.brute import optimum

BITS = ((2, 4), (4, 4), (4, 8), (8, 8))

#: Hypothesis settings of the property tests against enumeration: fixed
#: examples (a failure reproduces) and no per-example deadline (some
#: examples take a slow path of the engine).
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def quant_problem(num_layers: int, seed: int) -> Problem:
    """A quantization-shaped problem: options are (weight, activation) bit pairs,
    Omega falls with bits, size and BOPs grow with them."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(num_layers):
        params = int(rng.integers(1_000, 100_000))
        macs = params * int(rng.integers(10, 200))
        trace = float(rng.lognormal(-3, 1))
        options = []
        for wb, ab in BITS:
            options.append(
                OptionCost(
                    key=f"w{wb}a{ab}",
                    omega=trace * params * (2.0 ** (-2 * wb) + 0.5 * 2.0 ** (-2 * ab)),
                    size_bytes=params * wb / 8,
                    bops=float(macs * wb * ab),
                    latency_ms=float(macs * max(wb, ab) * 1e-9 * rng.uniform(0.8, 1.2)),
                    weight_bits=float(wb),
                    weight_format=f"int{wb}",
                    act_format=f"int{ab}",
                )
            )
        layers.append(LayerChoice(name=f"layer{i}", parameters=params, options=tuple(options)))
    return Problem(layers=tuple(layers), name=f"quant-{num_layers}-{seed}")


def total(problem: Problem, assignment: dict[str, str], axis: str) -> float:
    by = {layer.name: {o.key: o for o in layer.options} for layer in problem.layers}
    return sum(getattr(by[name][key], axis) for name, key in assignment.items())


def whole_core(inst: Instance) -> tuple[Core, np.ndarray, np.ndarray]:
    """Every group with more than one option as the core (no fixing), priced at
    the LP multipliers: ``(core, first valid option per group, slack)``."""
    slack = feasibility_slack(inst.limits, np.where(inst.valid[None], inst.rows, 0.0))
    lam = lp_dual(inst).lam if inst.rows.shape[0] else np.zeros(0)
    bound, v = lagrangian(inst, lam)
    rc = np.where(inst.valid, v - v.min(axis=1, keepdims=True), np.inf)
    counts = inst.valid.sum(axis=1)
    single = np.flatnonzero(counts == 1)
    first = inst.valid.argmax(axis=1)
    base_rows = inst.rows[:, single, first[single]].sum(axis=1)
    base_obj = float(inst.obj[single, first[single]].sum())
    core = build_core(
        inst,
        inst.valid,
        rc,
        lam,
        np.flatnonzero(counts > 1),
        base_obj,
        inst.limits + slack - base_rows,
        bound,
    )
    return core, first, slack


def case_instance(case: tuple[Problem, dict[str, float]]) -> tuple[float | None, Instance]:
    """A drawn ``(problem, budgets)`` case as the property tests use it: brute
    force's optimum (``None`` when infeasible) and the Omega instance the
    engines search."""
    problem, budgets = case
    return optimum(problem, budgets), ProblemSolver(problem).instance("omega", Budgets(**budgets))


def check_core_optimum(
    inst: Instance,
    whole: tuple[Core, np.ndarray, np.ndarray],
    answer: tuple[list[int] | None, float, int, bool],
    expected: float | None,
) -> bool:
    """Assert that a core search over ``whole_core(inst)`` answered as brute
    force did: it completed, found nothing when nothing is feasible, else a
    configuration within the budgets whose value is the optimum. Returns
    whether there was an optimum (more to check)."""
    core, first, slack = whole
    found, value, _, complete = answer
    assert complete
    if expected is None:
        assert found is None
        return False
    assert found is not None
    assert abs(value + inst.obj_offset - expected) <= 1e-7 * max(1.0, abs(expected))
    choice = first.copy()
    choice[core.groups] = found
    groups = np.arange(inst.num_groups)
    assert float(inst.obj[groups, choice].sum()) == pytest.approx(value)
    assert (inst.rows[:, groups, choice].sum(axis=1) <= inst.limits + slack).all()
    return True
