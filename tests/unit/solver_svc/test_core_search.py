"""The exact engine's building blocks against independent references.

- ``hull_chains``: the chain it returns is the lower convex hull from the
  origin (convex, every point on or above it, vertices are points, reaches
  the farthest point).
- ``_pareto`` with two rows (the staircase filter): exactly the states no
  earlier state beats on both rows, by an O(n^2) comparison.
- ``single_row_lp``: its LP value equals scipy's LP optimum.
- The dynamic programming alone (depth-first search switched off) matches
  brute-force enumeration on random problems (hypothesis).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given

from solver_svc.core_search import _pareto, dp, hull_chains
from solver_svc.dual import lagrangian, lp_dual, single_row_lp
from solver_svc.exact import solve_instance
from solver_svc.presolve import Instance
from tests.unit.solver_svc.helpers import SETTINGS, case_instance, check_core_optimum, whole_core
from tests.unit.solver_svc.test_exactness import problems

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", range(20))
def test_hull_chains_is_the_lower_hull_from_the_origin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, width = 5, 7
    integer = seed % 2 == 0  # collinear and repeated points are the hard cases
    d = rng.integers(-2, 6, (n, width)).astype(float) if integer else rng.normal(1, 1, (n, width))
    c = rng.integers(0, 6, (n, width)).astype(float) if integer else rng.random((n, width)) * 5
    ok = rng.random((n, width)) < 0.85
    rows, widths, slopes, ends = hull_chains(d, c, ok)
    for r in range(n):
        mask = rows == r
        pts = [(x, y) for x, y, o in zip(d[r], c[r], ok[r], strict=True) if o and x > 0]
        if not pts:
            assert not mask.any()
            continue
        w, s, e = widths[mask], slopes[mask], ends[mask]
        assert (w > 0).all() and (np.diff(s) > 0).all()  # convex, no collinear vertex
        xs = np.concatenate([[0.0], np.cumsum(w)])
        ys = np.concatenate([[0.0], np.cumsum(w * s)])
        # Vertices are given points, and the chain reaches the farthest one.
        for k, x, y in zip(e, xs[1:], ys[1:], strict=True):
            assert ok[r, k] and d[r, k] == pytest.approx(x) and c[r, k] == pytest.approx(y)
        assert xs[-1] == pytest.approx(max(x for x, _ in pts))
        # Every point lies on or above the chain.
        for x, y in pts:
            assert y >= np.interp(x, xs, ys) - 1e-9


@pytest.mark.parametrize("seed", range(12))
def test_two_row_dominance_filter_keeps_exactly_the_undominated(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 700))  # several blocks of the staircase filter
    obj = rng.integers(0, 30, n).astype(float)
    used = rng.integers(0, 25, (n, 2)).astype(float)
    got = set(_pareto(obj, used, max_pairs=10**9).tolist())
    order = np.lexsort((used[:, 1], used[:, 0], obj))
    expected = set()
    for pos, i in enumerate(order):
        earlier = used[order[:pos]]
        if not ((earlier <= used[i]).all(axis=1)).any():
            expected.add(int(i))
    assert got == expected


def _random_instance(seed: int, rows: int) -> Instance:
    rng = np.random.default_rng(seed)
    groups, width = 12, 5
    obj = rng.random((groups, width)) * 10
    a = rng.random((rows, groups, width)) * 4
    valid = rng.random((groups, width)) < 0.9
    valid[:, 0] = True
    mins = np.where(valid[None], a, np.inf).min(axis=2).sum(axis=1)
    maxs = np.where(valid[None], a, -np.inf).max(axis=2).sum(axis=1)
    limits = mins + rng.uniform(0.1, 0.6, rows) * (maxs - mins)
    return Instance(
        obj=np.where(valid, obj, np.inf),
        rows=np.where(valid[None], a, 0.0),
        limits=limits,
        row_axes=tuple(f"r{i}" for i in range(rows)),
        option_index=np.where(valid, np.arange(width)[None, :], -1),
        valid=valid,
        obj_offset=0.0,
        objective="omega",
    )


def _scipy_lp(inst: Instance, rows: list[int]) -> float:
    from scipy.optimize import linprog

    g_idx, k_idx = np.nonzero(inst.valid)
    n = len(g_idx)
    a_eq = np.zeros((inst.num_groups, n))
    a_eq[g_idx, np.arange(n)] = 1.0
    a_ub = inst.rows[rows][:, g_idx, k_idx]
    res = linprog(
        inst.obj[g_idx, k_idx],
        A_ub=a_ub,
        b_ub=inst.limits[rows],
        A_eq=a_eq,
        b_eq=np.ones(inst.num_groups),
        bounds=(0, 1),
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("seed", range(15))
def test_single_row_lp_is_the_lp_optimum(seed: int) -> None:
    inst = _random_instance(seed, rows=3)
    for row in range(3):
        result = single_row_lp(inst, row)
        assert result is not None
        dual, covers = result
        lp = _scipy_lp(inst, [row])
        assert dual.lp_value == pytest.approx(lp, rel=1e-9, abs=1e-9)
        assert dual.bound <= lp + 1e-9  # weak duality: a valid bound
        assert dual.bound == pytest.approx(lp, rel=1e-7, abs=1e-7)  # and a tight one
        assert dual.bound == pytest.approx(lagrangian(inst, dual.lam)[0])
        if covers:  # then it is the optimum of the LP with every row
            assert dual.lp_value == pytest.approx(_scipy_lp(inst, [0, 1, 2]), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_lp_dual_master_reaches_the_lp_optimum(seed: int) -> None:
    """The column-generation master (loaded as one model proto, grown through
    the solver's API) ends at the LP optimum with every row: a warm start
    with two positive multipliers skips the single-row shortcut."""
    tight = _random_instance(seed, rows=3)
    # Halfway to the largest usage: three random rows at once are often
    # LP-infeasible at the generator's limits.
    most = np.where(tight.valid[None], tight.rows, -np.inf).max(axis=2).sum(axis=1)
    inst = tight.with_limits(0.5 * (tight.limits + most))
    dual = lp_dual(inst, lam0=np.array([1e-3, 1e-3, 0.0]))
    lp = _scipy_lp(inst, [0, 1, 2])
    assert dual.rounds >= 1  # the master ran
    assert dual.bound <= lp + 1e-9 * max(1.0, abs(lp))
    assert dual.bound == pytest.approx(lp, rel=1e-7, abs=1e-7)
    assert dual.lp_value == pytest.approx(lp, rel=1e-7, abs=1e-7)


@SETTINGS
@given(problems())
def test_dynamic_programming_alone_matches_enumeration(case: tuple) -> None:  # type: ignore[type-arg]
    expected, inst = case_instance(case)
    result = solve_instance(inst, dfs_node_limit=1)
    if expected is None:
        assert result.choice is None and result.status == "infeasible"
        return
    assert result.choice is not None and result.status == "optimal"
    got = result.value + inst.obj_offset
    assert abs(got - expected) <= 1e-7 * max(1.0, abs(expected)), (got, expected)


@SETTINGS
@given(problems())
def test_dynamic_programming_from_no_incumbent_matches_enumeration(case: tuple) -> None:  # type: ignore[type-arg]
    """The whole instance as the core and no incumbent: the search alone
    (bounds, dominance, greedy completions) must find the optimum."""
    expected, inst = case_instance(case)
    whole = whole_core(inst)
    answer = dp(whole[0], np.inf, 0.0, 10**7, time.perf_counter() + 60)
    check_core_optimum(inst, whole, answer, expected)
