"""The integer surrogate bound and its search (``solver_svc/surrogate.py``).

- With no incumbent to prune by (a loose finite upper bound), the table
  gives, for the room every prefix leaves, the exact least objective of the
  rest under the surrogate row (checked by enumerating both).
- The search alone, from a loose or a just-too-tight upper bound, and the
  search aimed at targets near the bound first, match brute-force
  enumeration on random problems (hypothesis), whatever the other engines do.
- On 40-layer quantization-shaped problems with three budgets the whole
  engine (which now goes through the surrogate search) agrees with CP-SAT.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given

from solver_svc.cpsat import solve_cpsat
from solver_svc.exact import solve_instance
from solver_svc.presolve import Instance
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets
from solver_svc.surrogate import build_tables, search, search_targeted
from tests.unit.solver_svc.helpers import (
    SETTINGS,
    case_instance,
    check_core_optimum,
    quant_problem,
    total,
    whole_core,
)
from tests.unit.solver_svc.test_exactness import problems

pytestmark = pytest.mark.unit


def _loose_upper(inst: Instance) -> float:
    return float(np.where(inst.valid, np.abs(inst.obj), 0.0).max(axis=1).sum()) * 2 + 1.0


def test_tables_hold_each_suffix_exact_surrogate_optimum() -> None:
    checked = 0
    for seed in range(12):
        problem = quant_problem(7, seed=seed)
        all4 = {layer.name: "w4a4" for layer in problem.layers}
        inst = ProblemSolver(problem).instance(
            "omega", Budgets(size_bytes=1.3 * total(problem, all4, "size_bytes"))
        )
        core, _, _ = whole_core(inst)
        tables = build_tables(core, _loose_upper(inst), 0.0)
        if tables is None:
            continue
        n = core.depth
        for d in range(n + 1):
            combos = list(itertools.product(*(range(len(core.obj[j])) for j in range(d, n))))
            # The rooms the search asks about: what each prefix leaves.
            prefixes = itertools.product(*(range(len(core.obj[j])) for j in range(d)))
            rooms = {
                tables.capacity - sum(float(tables.weight[j][k]) for j, k in enumerate(p))
                for p in prefixes
            }
            for room in sorted(rooms):
                best = np.inf
                for combo in combos:
                    w = sum(float(tables.weight[d + i][k]) for i, k in enumerate(combo))
                    if w <= room:
                        best = min(
                            best, sum(float(core.obj[d + i][k]) for i, k in enumerate(combo))
                        )
                got = tables.lower(d, float(room))
                assert got == pytest.approx(best, rel=1e-12, abs=1e-12) or got == best == np.inf
                checked += 1
    assert checked > 100


@SETTINGS
@given(problems())
def test_surrogate_search_alone_matches_enumeration(case: tuple) -> None:  # type: ignore[type-arg]
    expected, inst = case_instance(case)
    if inst.rows.shape[0] == 0:
        return
    core, first, slack = whole_core(inst)
    lam = core.lam[: core.real_rows]
    if core.depth == 0 or not (lam > 0).any():  # nothing for the surrogate to do
        return
    # The folded surrogate and every row kept alone with the others priced
    # (a row the LP leaves slack is kept at unit scale, with everything priced).
    unit = np.eye(len(lam))
    kinds = [lam] + [unit[r] * (lam[r] if lam[r] > 0 else 1.0) for r in range(len(lam))]
    loose = [build_tables(core, _loose_upper(inst), 0.0, kept=kept) for kept in kinds]
    tables = [t for t in loose if t is not None]
    assert tables
    deadline = time.perf_counter() + 60
    answer = search(core, tables, _loose_upper(inst), 0.0, 10**7, deadline)
    if not check_core_optimum(inst, (core, first, slack), answer, expected):
        return
    assert expected is not None
    value = answer[1]
    for table in tables:  # each is a relaxation: never above the optimum
        bound = table.root + core.base_obj + inst.obj_offset
        assert bound <= expected + 1e-7 * max(1.0, abs(expected))
    # Pruning by an incumbent just above the optimum still finds it (tables
    # built with that incumbent drop only what cannot beat it).
    upper = value + 1e-6 * max(1.0, abs(value))
    tight = [build_tables(core, upper, 0.0, kept=kept) for kept in kinds]
    assert tight[0] is not None
    again, value2, _, complete2 = search(
        core, [t for t in tight if t is not None], upper, 0.0, 10**7, deadline
    )
    assert complete2 and again is not None
    # Aiming at targets near the bound first ends at the same optimum.
    aimed, value3, _, complete3 = search_targeted(
        core, tables, _loose_upper(inst), 0.0, 10**7, deadline
    )
    assert complete3 and aimed is not None
    assert value3 == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert value2 == pytest.approx(value, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_engine_agrees_with_cpsat_on_three_budget_problems(seed: int) -> None:
    problem = quant_problem(40, seed=100 + seed)
    rng = np.random.default_rng(seed)
    limits = {}
    for axis in ("size_bytes", "bops", "latency_ms"):
        lo = sum(min(getattr(o, axis) for o in layer.options) for layer in problem.layers)
        hi = sum(max(getattr(o, axis) for o in layer.options) for layer in problem.layers)
        limits[axis] = lo + float(rng.uniform(0.2, 0.6)) * (hi - lo)
    inst = ProblemSolver(problem).instance("omega", Budgets(**limits))
    ours = solve_instance(inst)
    ref = solve_cpsat(inst, time_limit_s=60)
    assert ours.status == "optimal" and ref.status == "optimal"
    assert ours.choice is not None and ref.choice is not None
    ref_value = float(inst.obj[np.arange(inst.num_groups), ref.choice].sum())
    scale = float(np.where(inst.valid, np.abs(inst.obj), 0.0).max(axis=1).sum())
    # CP-SAT's objective is exact to about groups * 2^-30 of the range.
    assert ours.value <= ref_value + 1e-7 * scale
    assert ours.value >= ref_value - 1e-7 * scale


def test_work_limits_give_up_instead_of_answering_wrong() -> None:
    """The compiled loops (``kernels.py``) stop at their state, time and node
    limits and say so: no tables, or an incomplete search."""
    problem = quant_problem(30, seed=3)
    all4 = {layer.name: "w4a4" for layer in problem.layers}
    inst = ProblemSolver(problem).instance(
        "omega", Budgets(size_bytes=1.5 * total(problem, all4, "size_bytes"))
    )
    core, _, _ = whole_core(inst)
    loose = _loose_upper(inst)
    tables = build_tables(core, loose, 0.0)
    assert tables is not None and tables.states > 40
    assert build_tables(core, loose, 0.0, state_limit=tables.states - 1) is None
    assert build_tables(core, loose, 0.0, state_limit=tables.states) is not None
    assert build_tables(core, loose, 0.0, deadline=time.perf_counter() - 1.0) is None
    deadline = time.perf_counter() + 60
    _, _, nodes, complete = search(core, tables, loose, 0.0, 3, deadline)
    assert nodes == 3 and not complete
    found, _, nodes, complete = search(core, tables, loose, 0.0, 10**7, deadline)
    assert complete and found is not None and nodes > 3
