"""Exact branch-and-bound for the multiple-choice knapsack with a few budgets.

Why a special method: the problem is a multiple-choice knapsack whose LP
relaxation leaves at most one group fractional per budget row, so the LP bound
is within a hair of the optimum and a search around the LP solution is tiny.
A general MIP/CP solver spends most of its time on model building and
presolve that this structure makes unnecessary (``benchmarks/bench_solver.py``
measures the difference).

The steps, each exact:

1. Options that break a budget on their own (given the cheapest choice in
   every other group) are removed.
2. ``dual.lp_dual`` gives LP multipliers ``lam`` and the bound ``LB = L(lam)``.
3. ``heuristic`` gives an incumbent ``UB`` (LP rounding, the warm-start hint,
   repaired when a neighbouring frontier point's optimum is just over the
   new limit, then polished by one- and two-group exchanges).
4. Reduced-cost fixing: any configuration's objective is at least
   ``LB + sum_g rc[g, x_g]`` with ``rc = obj + lam . rows - min``, so an option
   with ``rc > UB - LB`` cannot be in a better configuration and is dropped.
   Groups left with one option are fixed; the rest form the core.
5a. ``surrogate``: single-row knapsack tables of every suffix of the core
   (one binding row kept integral, the others priced at ``lam``) bound a
   depth-first search far more tightly than the LP: what is left after
   fixing is the integrality gap of large layers, which the LP cannot see.
   Tables are added in two stages while the search does not finish (see the
   comments in ``solve_instance``). Measured on the 12 ResNet50-sized
   instances of ``benchmarks/bench_solver.py`` (CPU time, same machine and
   run): median 13 ms -> 4.6 ms, slowest 166 ms -> 24 ms; the 100-point
   frontier of the first one 2.5 s -> 1.0-1.4 s.
5b. If that runs out of nodes, ``core_search``: the LP-bounded depth-first
   search, then dynamic programming with dominance. Completing any of them
   proves optimality.
6. If all exceed their work limits, CP-SAT (``cpsat.py``) solves the reduced
   core, warm-started from the incumbent: still exact, just slower.

All comparisons use the tolerances in ``tolerance.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from solver_svc.core_search import build_core, dfs, dp
from solver_svc.cpsat import solve_cpsat
from solver_svc.dual import lagrangian, lp_dual
from solver_svc.heuristic import (
    alpha_round,
    feasible,
    improve,
    improve_pairs,
    lp_branch_candidates,
    objective_of,
    repair,
    round_lp,
)
from solver_svc.presolve import Instance
from solver_svc.surrogate import (
    FINE_TARGET_DEPTH,
    FINE_TARGET_FRACTIONS,
    TABLE_STATE_LIMIT,
    TARGET_FRACTIONS,
    SuffixTables,
    build_tables,
    search_targeted,
)
from solver_svc.tolerance import feasibility_slack, objective_slack

__all__ = ["InstanceResult", "solve_instance"]

#: Depth-first nodes before the core goes to dynamic programming.
DFS_NODE_LIMIT = 400
#: Relative gap between incumbent and bound above which more incumbents are tried.
_BRANCH_GAP = 1e-4
#: Dynamic-programming states (summed over depths) before it goes to CP-SAT:
#: past this CP-SAT on the reduced core is faster than going on.
DP_STATE_LIMIT = 30_000
#: Candidates per side of the two-group exchanges that polish the incumbent.
PAIR_CANDIDATES = 100
#: Nodes of the surrogate-bounded search (``surrogate.py``) before the core
#: goes to the searches above. High: compiled, a node costs 0.1-0.2 us, and
#: the hardest 500-layer frontier point needed 1.7 million (0.2 s) where
#: CP-SAT on the core took 0.8-1.2 s (with 60,000 nodes, as when the search
#: ran in Python, 7 points of a 100-point frontier went to CP-SAT).
SURROGATE_NODE_LIMIT = 3_000_000
#: Nodes of its first stage (one table). Compiled search made nodes cheap
#: next to more 500-layer tables (5-40 ms each): 30,000 took 10-20 % less
#: time than 300 over 100-point frontiers (54 and 500 layers); 3,000 to
#: 300,000 were within noise of each other.
SURROGATE_LIGHT_LIMIT = 30_000


@dataclass(frozen=True)
class InstanceResult:
    """``choice[g]`` is the instance column chosen in group ``g`` (``None`` when
    no feasible configuration was found); ``value`` excludes ``obj_offset``."""

    choice: np.ndarray | None
    value: float
    bound: float
    status: str  # "optimal" | "feasible" | "infeasible" | "unknown"
    lam: np.ndarray
    engine: str
    nodes: int = 0
    core_groups: int = 0


def _restricted(inst: Instance, mask: np.ndarray) -> Instance:
    return Instance(
        obj=np.where(mask, inst.obj, np.inf),
        rows=np.where(mask[None], inst.rows, 0.0),
        limits=inst.limits,
        row_axes=inst.row_axes,
        option_index=inst.option_index,
        valid=mask,
        obj_offset=inst.obj_offset,
        objective=inst.objective,
    )


def _row_minima(inst: Instance) -> np.ndarray:
    return np.where(inst.valid[None], inst.rows, np.inf).min(axis=2)  # [m, G]


def _budget_mask(inst: Instance, slack: np.ndarray) -> np.ndarray:
    """Options that keep every row within reach of its limit (step 1)."""
    mask = inst.valid.copy()
    if inst.rows.shape[0] == 0:
        return mask
    mins = _row_minima(inst)
    total = mins.sum(axis=1)
    rest = total[:, None] - mins  # [m, G]
    reach = rest[:, :, None] + inst.rows <= (inst.limits + slack)[:, None, None]
    return mask & reach.all(axis=0)


def _best(inst: Instance, candidates: list[np.ndarray]) -> tuple[np.ndarray | None, float]:
    best: np.ndarray | None = None
    upper = math.inf
    for cand in candidates:
        value = objective_of(inst, cand)
        if value < upper:
            best, upper = cand, value
    return best, upper


def solve_instance(
    inst: Instance,
    *,
    time_limit_s: float = 10.0,
    hint: np.ndarray | None = None,
    lam0: np.ndarray | None = None,
    dfs_node_limit: int = DFS_NODE_LIMIT,
    dp_state_limit: int = DP_STATE_LIMIT,
) -> InstanceResult:
    """Solve one instance exactly (see the module doc)."""
    start = time.perf_counter()
    m = inst.rows.shape[0]
    if m == 0:
        choice = np.asarray(inst.obj.argmin(axis=1))
        value = objective_of(inst, choice)
        return InstanceResult(choice, value, value, "optimal", np.zeros(0), "bb")
    slack = feasibility_slack(inst.limits, np.where(inst.valid[None], inst.rows, 0.0))
    mask = _budget_mask(inst, slack)
    if not mask.any(axis=1).all():
        return InstanceResult(None, math.inf, math.inf, "infeasible", np.zeros(m), "bb")
    work = _restricted(inst, mask)
    tol = objective_slack(np.where(mask, work.obj, 0.0), mask)

    dual = lp_dual(work, lam0)
    lam = dual.lam
    bound, v = lagrangian(work, lam)

    candidates: list[np.ndarray] = []
    if hint is not None and bool(work.valid[np.arange(work.num_groups), hint].all()):
        # A neighbouring frontier point's optimum is usually just over the new
        # limit: repaired, it is a close incumbent (smaller tables, fewer nodes).
        start_from = hint if feasible(work, hint, slack) else repair(work, hint, slack)
        if start_from is not None and feasible(work, start_from, slack):
            candidates.append(improve(work, start_from, slack))
    rounded = round_lp(work, dual, v, slack)
    if rounded is not None:
        candidates.append(rounded)
    incumbent, upper = _best(work, candidates)
    if upper - bound > _BRANCH_GAP * max(abs(upper), abs(bound), 1e-300):
        # Far from the bound: a large layer is probably fractional in the LP;
        # try its options (heuristic.lp_branch_candidates).
        candidates.extend(lp_branch_candidates(work, dual, v, slack))
        if not candidates:
            fallback = alpha_round(work, lam, slack)
            if fallback is not None:
                candidates.append(fallback)
        incumbent, upper = _best(work, candidates)
    if incumbent is not None and hint is not None:
        # Two-group exchanges pay off on a repaired warm start (a frontier
        # sweep's points: 10 % less time over a 100-point 54-layer frontier);
        # on a cold solve the LP-rounded incumbent gains too little from them
        # (6 % more time over the 12 ResNet50-sized instances).
        incumbent = improve_pairs(work, incumbent, slack, lam, max_candidates=PAIR_CANDIDATES)
        upper = objective_of(work, incumbent)
    if incumbent is not None and upper <= bound + tol:
        return InstanceResult(incumbent, upper, bound, "optimal", lam, "bb")

    vmin = v.min(axis=1)
    rc = v - vmin[:, None]
    keep = mask & (rc <= (upper - bound) + tol) if math.isfinite(upper) else mask
    counts = keep.sum(axis=1)
    if not counts.all():  # no option can beat the incumbent in some group: it is optimal
        return InstanceResult(incumbent, upper, upper, "optimal", lam, "bb")
    core_groups = np.flatnonzero(counts > 1)
    fixed = np.flatnonzero(counts == 1)
    fixed_choice = np.where(keep, rc, np.inf).argmin(axis=1)
    base_rows = work.rows[:, fixed, fixed_choice[fixed]].sum(axis=1)
    base_obj = float(work.obj[fixed, fixed_choice[fixed]].sum())
    residual = work.limits + slack - base_rows
    core = build_core(work, keep, rc, lam, core_groups, base_obj, residual, bound)
    deadline = start + max(time_limit_s, 0.0)
    nodes = 0
    complete = False
    # Step 5a: the integer surrogate bounds (surrogate.py), in two stages:
    # 1. one table: the binding row with the largest share ``lam_r *
    #    residual_r`` of the bound kept, the others priced (most frontier
    #    points of a 54-layer problem finish here in under 100 nodes);
    # 2. if that search does not finish, it starts again from its best
    #    incumbent with every binding row kept alone and each row the LP
    #    leaves slack (lam = 0), which can still bind in integers. On 54-layer
    #    frontier points with two binding rows the search took 2-40 ms with
    #    the per-row tables where one table of all rows folded together took
    #    0.2-1.7 s; as a third table beside them it cost 10-25 % more time
    #    over 100-point frontiers (54 and 500 layers; it outgrew its state
    #    cap on most 500-layer points), so it is not built. A third stage
    #    between these two (slack rows last) cost 5-15 % more on a
    #    100-point frontier.
    unit = np.eye(m)
    positive = np.flatnonzero(lam > 0)
    share = lam * np.abs(core.residual[:m])
    first_row = int(positive[np.argmax(share[positive])]) if len(positive) else -1
    per_row = [unit[r] * lam[r] for r in positive if r != first_row]
    # On cores of FINE_TARGET_DEPTH groups or more the searches below
    # (Python, LP-bounded) never finished where this one did not: such cores
    # go straight to CP-SAT.
    big = core.depth >= FINE_TARGET_DEPTH
    stages: list[tuple[int, list[np.ndarray]]] = [
        (SURROGATE_LIGHT_LIMIT, [unit[first_row] * lam[first_row]] if len(positive) else []),
        (SURROGATE_NODE_LIMIT, [*per_row, *unit[lam <= 0]]),
    ]
    tables: list[SuffixTables] = []

    def adopt(found: list[int]) -> tuple[np.ndarray, float]:
        """A core search's configuration, completed by the fixed groups, and its value."""
        chosen = fixed_choice.copy()
        chosen[core.groups] = found
        return chosen, objective_of(work, chosen)

    for limit, kinds in stages:
        for kept in kinds:
            table = build_tables(
                core, upper, tol, kept=kept, state_limit=TABLE_STATE_LIMIT, deadline=deadline
            )
            if table is not None:
                tables.append(table)
        if not tables or (not kinds and limit != SURROGATE_NODE_LIMIT):
            continue  # nothing new to search with
        # The first stage searches plainly (most points finish in it); the second
        # aims at targets near the bound first (``search_targeted``).
        fractions = (
            (1.0,)
            if limit == SURROGATE_LIGHT_LIMIT
            else FINE_TARGET_FRACTIONS
            if core.depth >= FINE_TARGET_DEPTH
            else TARGET_FRACTIONS
        )
        found, _, work_done, complete = search_targeted(
            core, tables, upper, tol, limit, deadline, fractions
        )
        nodes += work_done
        if found is not None:
            incumbent, upper = adopt(found)
        if complete:
            break
    for search, limit in ((dfs, dfs_node_limit), (dp, dp_state_limit)):
        if complete or big:
            break
        found, _, work_done, complete = search(core, upper, tol, limit, deadline)
        nodes += work_done
        if found is not None:
            incumbent, upper = adopt(found)
        if complete:
            break
    if complete:
        if incumbent is None:
            return InstanceResult(
                None, math.inf, math.inf, "infeasible", lam, "bb", nodes, core.depth
            )
        return InstanceResult(incumbent, upper, upper, "optimal", lam, "bb", nodes, core.depth)

    # Step 6: the core was too large for the depth-first search.
    remaining = time_limit_s - (time.perf_counter() - start)
    result = solve_cpsat(work, keep, hint=incumbent, time_limit_s=max(remaining, 0.05))
    engine = "bb+cpsat"
    if result.choice is not None:
        value = objective_of(work, result.choice)
        if feasible(work, result.choice, slack) and value < upper:
            incumbent, upper = result.choice, value
    if result.status == "infeasible" and incumbent is None:
        return InstanceResult(
            None, math.inf, math.inf, "infeasible", lam, engine, nodes, core.depth
        )
    if incumbent is None:
        return InstanceResult(None, math.inf, bound, "unknown", lam, engine, nodes, core.depth)
    if result.status == "optimal":
        return InstanceResult(incumbent, upper, upper, "optimal", lam, engine, nodes, core.depth)
    best_bound = max(bound, result.bound)
    status = "optimal" if upper <= best_bound + tol else "feasible"
    return InstanceResult(incumbent, upper, best_bound, status, lam, engine, nodes, core.depth)
