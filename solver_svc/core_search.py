"""Exact search over the core left after reduced-cost fixing (``exact.py`` step 5).

The core is the few groups that still have more than one option whose
reduced cost ``rc`` fits in the gap ``UB - LB``. Both searches below share one
bound: a partial configuration costs at least

    LB + (sum of the reduced costs chosen so far) + extra

where ``extra`` is, for each budget row, the LP cost (in reduced costs) the
remaining groups must pay to free what their least-reduced-cost choices would
overrun (a single-row convex-hull bound; the largest row counts). A row the
remaining groups cannot free enough of makes the partial configuration
infeasible.

- ``dfs``: depth first, options in increasing reduced cost: the fastest proof
  when the gap is small.
- ``dp``: dynamic programming over the groups with Pareto dominance on
  (objective, used budgets): partial configurations that another beats on
  every count are dropped, which collapses the combinations a depth-first
  search would enumerate when a large layer forces many small ones to make
  room (the knapsack "big item" case). Vectorised with numpy.

Both return ``(assignment or None, value, work, complete)``; ``complete`` False
means a work limit stopped them and nothing is proven.
"""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from solver_svc.presolve import Instance

__all__ = ["Core", "build_core", "dfs", "dp"]

#: Cores deeper than this skip the recursive search (Python's recursion limit).
MAX_DFS_DEPTH = 800
#: States at one depth past which dynamic programming with dominance on two
#: or more budget rows stops (it grows too fast there).
MULTI_ROW_STATES = 1_500


@dataclass(frozen=True, eq=False)
class Core:
    """The core groups in search order with everything the bound needs.

    Per row ``r`` and depth ``i`` two merged convex-hull curves of the groups
    ``i..n-1``, as (cumulative usage, cumulative reduced cost, slope):
    ``down`` prices freeing usage below the least-reduced-cost choices,
    ``up`` prices growing above them.
    """

    groups: np.ndarray  # instance group index per depth
    ks: list[np.ndarray]  # instance option columns per depth (increasing rc)
    rc: list[np.ndarray]  # reduced costs relative to the depth's first option
    obj: list[np.ndarray]
    rows: list[np.ndarray]  # [m, options] per depth
    ref_suffix: np.ndarray  # [n + 1, m]: rest's usage at its least-rc choices
    down: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # [row][depth]
    up: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # [row][depth]
    lam: np.ndarray  # [m] multipliers the reduced costs were priced with
    residual: np.ndarray  # [m] capacity left for the core (slack included)
    real_rows: int  # rows past this are implied ones added for the bound
    base_obj: float  # objective of the fixed groups
    bound: float  # LB plus the core's least reduced costs

    @property
    def depth(self) -> int:
        return len(self.groups)


def _hull_segments(d: np.ndarray, c: np.ndarray) -> list[tuple[float, float]]:
    """Lower convex hull, from the origin, of points ``(d, c)`` with ``d > 0``:
    the LP's cheapest way for one group to move ``d`` units of a row at reduced
    cost ``c``. Returns segments ``(width, slope)`` of increasing slope."""
    pts = sorted((float(x), float(y)) for x, y in zip(d, c, strict=True) if x > 0)
    hull: list[tuple[float, float]] = [(0.0, 0.0)]
    for x, y in pts:
        if x == hull[-1][0]:
            if y < hull[-1][1]:
                hull.pop()
            else:
                continue
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or above the chord.
            if (y2 - y1) * (x - x1) >= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append((x, y))
    return [(x2 - x1, (y2 - y1) / (x2 - x1)) for (x1, y1), (x2, y2) in itertools.pairwise(hull)]


def _suffix_curves(
    segments: list[list[tuple[float, float]]],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each depth ``i``: the merged hull of groups ``i..n-1`` as cumulative
    widths, cumulative costs and slopes (a single-row LP of the rest)."""
    n = len(segments)
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    out = [empty] * (n + 1)
    widths = np.zeros(0)
    slopes = np.zeros(0)
    for i in range(n - 1, -1, -1):
        if segments[i]:
            w, sl = zip(*segments[i], strict=True)
            widths = np.concatenate([widths, np.asarray(w)])
            slopes = np.concatenate([slopes, np.asarray(sl)])
            order = np.argsort(slopes, kind="stable")
            widths, slopes = widths[order], slopes[order]
        out[i] = (np.cumsum(widths), np.cumsum(widths * slopes), slopes)
    return out


def _free_cost(curve: tuple[np.ndarray, np.ndarray, np.ndarray], need: np.ndarray) -> np.ndarray:
    """Least reduced cost to free ``need > 0`` usage (inf when impossible)."""
    cum_w, cum_c, slopes = curve
    if len(cum_w) == 0:
        return np.where(need > 0, np.inf, 0.0)
    j = np.searchsorted(cum_w, need, side="left")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    cost = prev_c + slopes[jj] * (need - prev_w)
    cost = np.where(j >= len(cum_w), np.inf, cost)
    return np.where(need > 0, cost, 0.0)


def _waste(
    curve: tuple[np.ndarray, np.ndarray, np.ndarray], lam: float, spare: np.ndarray
) -> np.ndarray:
    """Least ``sum rc + lam * (spare - growth)`` over LP growths ``<= spare``:
    capacity left unused costs ``lam`` per unit, growing into it costs the
    up-hull's reduced costs, whichever is cheaper per unit is used."""
    spare = np.maximum(spare, 0.0)
    cum_w, cum_c, slopes = curve
    if lam <= 0:
        return np.zeros_like(spare)
    if len(cum_w) == 0:
        return lam * spare
    cheap = int(np.searchsorted(slopes, lam, side="left"))  # segments cheaper than lam
    limit = cum_w[cheap - 1] if cheap else 0.0
    grow = np.minimum(spare, limit)
    j = np.searchsorted(cum_w, grow, side="left")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    cost = np.where(grow > 0, prev_c + slopes[jj] * (grow - prev_w), 0.0)
    return cost + lam * (spare - grow)


def _max_growth(curve: tuple[np.ndarray, np.ndarray, np.ndarray], budget: np.ndarray) -> np.ndarray:
    """Most usage the rest can add spending at most ``budget`` reduced cost."""
    cum_w, cum_c, slopes = curve
    if len(cum_w) == 0:
        return np.zeros_like(budget)
    budget = np.maximum(budget, 0.0)
    j = np.searchsorted(cum_c, budget, side="right")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        partial = prev_w + np.where(slopes[jj] > 0, (budget - prev_c) / slopes[jj], 0.0)
    return np.where(j >= len(cum_w), cum_w[-1], partial)


def build_core(
    inst: Instance,
    keep: np.ndarray,
    rc: np.ndarray,
    lam: np.ndarray,
    core_groups: np.ndarray,
    base_obj: float,
    residual: np.ndarray,
    bound: float,
) -> Core:
    """Order the core (groups that move the budgets most first, so pruning
    starts early) and precompute the bound's curves."""
    real_rows = inst.rows.shape[0]
    lam = np.asarray(lam, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    all_rows = inst.rows
    if int((lam > 0).sum()) >= 2:
        # The lam-weighted sum of the rows: a constraint every feasible
        # configuration meets too, priced at exactly 1 per unit, whose
        # single-row bound is the node's LP bound in the multipliers' direction.
        combined = np.tensordot(lam, inst.rows, axes=1)[None]
        all_rows = np.concatenate([inst.rows, combined])
        residual = np.concatenate([residual, [float(lam @ residual)]])
        lam = np.concatenate([lam, [1.0]])
    m = all_rows.shape[0]
    scale = np.maximum(np.abs(residual[:real_rows]), 1e-300)
    spread = np.zeros(len(core_groups))
    for i, g in enumerate(core_groups):
        block = inst.rows[:, g, keep[g]]
        spread[i] = (
            float(((block.max(axis=1) - block.min(axis=1)) / scale).max()) if block.size else 0.0
        )
    order = core_groups[np.argsort(-spread, kind="stable")]
    n = len(order)
    ks_list, rc_list, obj_list, rows_list = [], [], [], []
    down: list[list[list[tuple[float, float]]]] = [[] for _ in range(m)]
    up: list[list[list[tuple[float, float]]]] = [[] for _ in range(m)]
    ref = np.zeros((n, m))
    first_rc = 0.0
    for i, g in enumerate(order):
        ks = np.flatnonzero(keep[g])
        ks = ks[np.argsort(rc[g, ks], kind="stable")]
        rel = rc[g, ks] - rc[g, ks[0]]
        first_rc += float(rc[g, ks[0]])
        rows = all_rows[:, g, ks]
        ks_list.append(ks)
        rc_list.append(rel)
        obj_list.append(inst.obj[g, ks])
        rows_list.append(rows)
        ref[i] = rows[:, 0]
        for r in range(m):
            down[r].append(_hull_segments(rows[r, 0] - rows[r], rel))
            up[r].append(_hull_segments(rows[r] - rows[r, 0], rel))
    ref_suffix = np.zeros((n + 1, m))
    for i in range(n - 1, -1, -1):
        ref_suffix[i] = ref_suffix[i + 1] + ref[i]
    return Core(
        groups=order,
        ks=ks_list,
        rc=rc_list,
        obj=obj_list,
        rows=rows_list,
        ref_suffix=ref_suffix,
        down=[_suffix_curves(down[r]) for r in range(m)],
        up=[_suffix_curves(up[r]) for r in range(m)],
        lam=lam,
        residual=residual,
        real_rows=real_rows,
        base_obj=base_obj,
        bound=bound + first_rc,
    )


def rest_bound(core: Core, depth: int, used: np.ndarray) -> np.ndarray:
    """``extra`` of the module doc for partial configurations ``used`` ([s, m])."""
    extra = np.zeros(used.shape[0])
    for r in range(used.shape[1]):
        spare = core.residual[r] - used[:, r] - core.ref_suffix[depth, r]
        cost = _free_cost(core.down[r][depth], -spare)
        if core.lam[r] > 0:
            cost = np.where(spare > 0, _waste(core.up[r][depth], float(core.lam[r]), spare), cost)
        extra = np.maximum(extra, cost)
    return extra


def dfs(
    core: Core, upper: float, tol: float, node_limit: int, deadline: float
) -> tuple[list[int] | None, float, int, bool]:
    """Depth-first search (see module doc). Assignment is per depth (columns)."""
    n = core.depth
    if n > MAX_DFS_DEPTH:
        return None, upper, 0, False
    m = len(core.residual)
    options = [
        list(
            zip(
                core.rc[i].tolist(),
                core.obj[i].tolist(),
                core.rows[i].T.tolist(),
                core.ks[i].tolist(),
                strict=True,
            )
        )
        for i in range(n)
    ]
    lists = [
        [[(c[0].tolist(), c[1].tolist(), c[2].tolist()) for c in curves] for curves in kind]
        for kind in (core.down, core.up)
    ]
    down, up = lists
    lam = core.lam.tolist()
    # Per row and depth: usage the up-hull grows at a rate below lam (worth it).
    cheap = [
        [(c[0][j - 1] if (j := bisect_left(c[2], lam[r])) else 0.0) for c in up[r]]
        for r in range(m)
    ]
    ref_suffix = core.ref_suffix.tolist()
    residual = core.residual.tolist()
    bound = core.bound
    rows_range = range(m)
    current = [0] * n
    best: list[int] | None = None
    state = {"upper": upper, "nodes": 0, "stopped": False}

    def along(curve: tuple[list[float], list[float], list[float]], x: float) -> float:
        """Cumulative cost of the first ``x`` units of a curve (x within it)."""
        cum_w, cum_c, slopes = curve
        j = bisect_left(cum_w, x)
        prev_w = cum_w[j - 1] if j else 0.0
        prev_c = cum_c[j - 1] if j else 0.0
        return prev_c + slopes[j] * (x - prev_w)

    def extra_for(depth: int, used: list[float]) -> float:
        extra = 0.0
        for r in rows_range:
            spare = residual[r] - used[r] - ref_suffix[depth][r]
            if spare < 0:
                curve = down[r][depth]
                if not curve[0] or -spare > curve[0][-1]:
                    return math.inf
                cost = along(curve, -spare)
            elif lam[r] > 0 and spare > 0:
                grow = min(spare, cheap[r][depth])
                cost = (along(up[r][depth], grow) if grow > 0 else 0.0) + lam[r] * (spare - grow)
            else:
                continue
            if cost > extra:
                extra = cost
        return extra

    def visit(depth: int, acc_rc: float, used: list[float], acc_obj: float) -> None:
        nonlocal best
        state["nodes"] += 1
        if state["nodes"] >= node_limit or (
            state["nodes"] % 1024 == 0 and time.perf_counter() > deadline
        ):
            state["stopped"] = True
            return
        if depth == n:
            value = core.base_obj + acc_obj
            if value < state["upper"] - tol:
                state["upper"] = value
                best = list(current)
            return
        for rcv, ob, row, k in options[depth]:
            if bound + acc_rc + rcv >= state["upper"] - tol:
                break
            new_used = [used[r] + row[r] for r in rows_range]
            extra = extra_for(depth + 1, new_used)
            if bound + acc_rc + rcv + extra >= state["upper"] - tol:
                continue
            current[depth] = k
            visit(depth + 1, acc_rc + rcv, new_used, acc_obj + ob)
            if state["stopped"]:
                return

    if bound + extra_for(0, [0.0] * m) >= upper - tol:
        return None, upper, 1, True  # the root is infeasible or cannot beat upper
    visit(0, 0.0, [0.0] * m, 0.0)
    return best, float(state["upper"]), int(state["nodes"]), not bool(state["stopped"])


def _pareto(obj: np.ndarray, used: np.ndarray, max_pairs: int) -> np.ndarray:
    """Indices of states not dominated on (obj, used columns); ``used`` holds
    only the rows that still matter. Ties keep the first. Filtering stops
    (keeping the rest) past ``max_pairs`` comparisons: dropping fewer states
    never loses the optimum."""
    n, m = used.shape
    order = np.lexsort((*used.T[::-1], obj)) if m else np.argsort(obj, kind="stable")
    if m == 0:
        return order[:1]
    u = used[order]
    if m == 1:
        prev = np.minimum.accumulate(np.concatenate([[np.inf], u[:-1, 0]]))
        return order[u[:, 0] < prev]
    kept: list[int] = []
    kept_u = np.zeros((0, m))
    chunk = 128
    pairs = 0
    for start in range(0, n, chunk):
        block = u[start : start + chunk]
        if pairs > max_pairs:
            kept.extend(range(start, n))
            break
        dom = (
            np.any(np.all(kept_u[None, :, :] <= block[:, None, :], axis=2), axis=1)
            if len(kept_u)
            else np.zeros(len(block), dtype=bool)
        )
        inner = (block[None, :, :] <= block[:, None, :]).all(axis=2)  # [j, i]: i dominates j
        inner &= np.tri(len(block), k=-1, dtype=bool)
        dom |= inner.any(axis=1)
        survivors = np.flatnonzero(~dom)
        kept.extend((start + survivors).tolist())
        kept_u = np.concatenate([kept_u, block[survivors]])
        pairs += len(block) * len(kept_u)
    return order[np.asarray(kept, dtype=np.int64)]


def dp(
    core: Core, upper: float, tol: float, state_limit: int, deadline: float
) -> tuple[list[int] | None, float, int, bool]:
    """Dynamic programming with dominance (see module doc)."""
    n = core.depth
    m = len(core.residual)
    acc_obj = np.zeros(1)
    acc_rc = np.zeros(1)
    used = np.zeros((1, m))
    back: list[tuple[np.ndarray, np.ndarray]] = []
    work = 0
    if not core.bound + float(rest_bound(core, 0, used)[0]) < upper - tol:
        return None, upper, 1, True  # the root is infeasible or cannot beat upper
    for i in range(n):
        if time.perf_counter() > deadline:
            return None, upper, work, False
        k_i = len(core.ks[i])
        c_obj = (acc_obj[:, None] + core.obj[i][None, :]).ravel()
        c_rc = (acc_rc[:, None] + core.rc[i][None, :]).ravel()
        c_used = (used[:, None, :] + core.rows[i].T[None, :, :]).reshape(-1, m)
        parent = np.repeat(np.arange(len(acc_obj)), k_i)
        option = np.tile(np.arange(k_i), len(acc_obj))
        extra = rest_bound(core, i + 1, c_used)
        alive = core.bound + c_rc + extra < upper - tol
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            return None, upper, work, True
        c_used_a = c_used[idx]
        budget = upper - tol - core.bound - c_rc[idx]
        relevant = np.zeros(m, dtype=bool)  # implied rows never count
        for r in range(core.real_rows):
            room = core.residual[r] - core.ref_suffix[i + 1, r] - c_used_a[:, r]
            relevant[r] = bool((_max_growth(core.up[r][i + 1], budget) > room).any())
        if int(relevant.sum()) > 1 and len(idx) > MULTI_ROW_STATES:
            # Dominance on two or more rows keeps too many states: give up
            # and let the caller use CP-SAT.
            return None, upper, work, False
        keep = idx[_pareto(c_obj[idx], c_used_a[:, relevant], max_pairs=5_000_000)]
        acc_obj, acc_rc, used = c_obj[keep], c_rc[keep], c_used[keep]
        back.append((parent[keep], option[keep]))
        work += len(keep)
        if len(keep) > state_limit:
            return None, upper, work, False
    best = int(np.argmin(acc_obj))
    value = core.base_obj + float(acc_obj[best])
    if not value < upper - tol:
        return None, upper, work, True
    assignment = [0] * n
    s = best
    for i in range(n - 1, -1, -1):
        parents, options = back[i]
        assignment[i] = int(core.ks[i][options[s]])
        s = int(parents[s])
    return assignment, value, work, True
