"""Compiled inner loops of the surrogate-bounded search (``surrogate.py``).

Why compiled: profiles of the 100-point frontiers showed the search and the
table build spending their time on interpreter overhead, not arithmetic.
On a transformer-sized frontier (500 layers x 12 options) the Python
depth-first search visited 842,000 nodes at about 8 us each and the table
build made 34,000 small numpy calls (plus 97,000 ``tolist`` conversions) for
states that number a few dozen per depth; on ResNet50-sized solves the
table build alone was half of a 3-6 ms solve. numba compiles the same
loops to machine code (``cache=True``: once per machine, kept in
``__pycache__`` or ``NUMBA_CACHE_DIR``); ``warm_up`` compiles them before a
service takes traffic so no request pays for it.

They release the GIL (``nogil``): a background frontier trace of the
service then runs beside its request threads instead of stalling them for a
whole table build (two 30-point frontiers in two threads took 1.3x one
alone, against 2.1x holding the GIL).

The functions take plain arrays so they stay free of the solver's classes;
``surrogate.py`` owns the meaning (see its module doc) and builds the
arrays. Both check a wall-clock ``deadline`` (``time.perf_counter`` seconds)
every few thousand steps through numba's object mode.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, objmode

__all__ = ["search_core", "suffix_states", "warm_up"]

#: Status codes of ``suffix_states``.
TABLES_OK, TABLES_TOO_MANY_STATES, TABLES_OUT_OF_TIME = 0, 1, 2


@njit(cache=True)
def _now() -> float:
    with objmode(t="float64"):
        t = time.perf_counter()
    return t


@njit(cache=True, nogil=True)
def _interp_right_inf(x: float, xp: np.ndarray, fp: np.ndarray) -> float:
    """``np.interp(x, xp, fp, right=inf)`` for one ``x`` (``xp`` ascending,
    repeated vertices allowed): the same formula numpy uses."""
    last = len(xp) - 1
    if x > xp[last]:
        return np.inf
    if x < xp[0]:
        return fp[0]
    if x == xp[last]:
        return fp[last]
    j = np.searchsorted(xp, x, side="right") - 1  # xp[j] <= x < xp[j + 1]
    if xp[j] == x:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    return slope * (x - xp[j]) + fp[j]


@njit(cache=True, nogil=True)
def suffix_states(
    weight: np.ndarray,  # [n, K] kept usage per option
    value: np.ndarray,  # [n, K] objective plus priced part per option
    reduced: np.ndarray,  # [n, K] reduced cost per option
    counts: np.ndarray,  # [n] real options per depth (the first ``counts[d]``)
    cost_x: np.ndarray,  # [n + 1, P] prefix LP cost vertices, index n - d
    cost_c: np.ndarray,  # [n + 1, P]
    prefix_ref: np.ndarray,  # [n + 1]
    capacity: float,
    budget: float,
    state_limit: int,
    deadline: float,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The Pareto states (usage ascending, value strictly descending) of every
    suffix ``d..n-1``, built from the last depth to the first, each state
    dropped when its reduced cost plus the prefix's LP cost at the usage it
    leaves reaches ``budget`` (``surrogate.build_tables`` explains why that
    is exact).

    Returns ``(status, usage, value, start, length, states)``: depth ``d``'s
    states are ``usage[start[d]:start[d] + length[d]]``; ``status`` is
    ``TABLES_OK`` or why the build gave up."""
    n = weight.shape[0]
    out_u = np.empty(state_limit + 1)
    out_v = np.empty(state_limit + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    length = np.zeros(n + 1, dtype=np.int64)
    out_u[0] = 0.0
    out_v[0] = 0.0
    length[n] = 1
    states = 1
    su = np.zeros(1)
    so = np.zeros(1)
    sr = np.zeros(1)
    for d in range(n - 1, -1, -1):
        if d % 16 == 0 and _now() > deadline:
            return TABLES_OUT_OF_TIME, out_u[:0], out_v[:0], start, length, states
        c = counts[d]
        size = len(su)
        cu = np.empty(size * c)
        co = np.empty(size * c)
        cr = np.empty(size * c)
        xp = cost_x[n - d] - (prefix_ref[d] - capacity)
        fp = cost_c[n - d]
        m = 0
        for s in range(size):
            for k in range(c):
                u = su[s] + weight[d, k]
                r = sr[s] + reduced[d, k]
                if r + _interp_right_inf(u, xp, fp) < budget:
                    cu[m] = u
                    co[m] = so[s] + value[d, k]
                    cr[m] = r
                    m += 1
        order = np.argsort(cu[:m], kind="mergesort")
        # Pareto filter by usage only: of equal usages a worse one may stay
        # when it comes first (wastes a state, never lowers a lookup).
        nu = np.empty(m)
        no = np.empty(m)
        nr = np.empty(m)
        kept = 0
        best = np.inf
        for i in range(m):
            idx = order[i]
            if kept == 0 or co[idx] < best:
                nu[kept] = cu[idx]
                no[kept] = co[idx]
                nr[kept] = cr[idx]
                kept += 1
            best = min(best, co[idx])
        if states + kept > state_limit:
            return TABLES_TOO_MANY_STATES, out_u[:0], out_v[:0], start, length, states + kept
        out_u[states : states + kept] = nu[:kept]
        out_v[states : states + kept] = no[:kept]
        start[d] = states
        length[d] = kept
        states += kept
        su = nu[:kept]
        so = no[:kept]
        sr = nr[:kept]
    return TABLES_OK, out_u[:states].copy(), out_v[:states].copy(), start, length, states


@njit(cache=True, nogil=True)
def search_core(
    obj: np.ndarray,  # [n, K]
    rows: np.ndarray,  # [n, K, R] real rows' usage per option
    ks: np.ndarray,  # [n, K] instance column per option
    counts: np.ndarray,  # [n]
    weight: np.ndarray,  # [n, K, T] each table's kept usage per option
    price: np.ndarray,  # [n, K, T] each table's priced part per option
    usage: np.ndarray,  # all tables' states, concatenated
    value: np.ndarray,
    start: np.ndarray,  # [T, n + 1] where table t's depth-d states begin
    length: np.ndarray,  # [T, n + 1]
    room0: np.ndarray,  # [T] kept capacity (plus its eps)
    offset: np.ndarray,  # [T] constant part of each table's bound
    room_rows: np.ndarray,  # [n, R] room per row for one option at depth d
    base_obj: float,
    upper: float,
    tol: float,
    node_limit: int,
    deadline: float,
) -> tuple[bool, np.ndarray, float, int, bool]:
    """Depth-first search with the tables' bound, children in increasing
    bound (ties in option order), pruning at ``best - tol`` (the Python
    reference is ``surrogate.search``'s docstring).

    Returns ``(found, assignment per depth, value, nodes, complete)``."""
    n, width, num_rows = rows.shape
    num_tables = weight.shape[2]
    current = np.zeros(n, dtype=np.int64)
    best_choice = np.zeros(n, dtype=np.int64)
    found = False
    best_value = upper
    nodes = 0
    stopped = False
    acc = np.zeros(n + 1)
    used = np.zeros((n + 1, num_rows))
    rooms = np.zeros((n + 1, num_tables))
    bases = np.zeros((n + 1, num_tables))
    rooms[0] = room0
    bases[0] = offset
    child_b = np.empty((n, width))
    child_k = np.empty((n, width), dtype=np.int64)
    child_count = np.zeros(n, dtype=np.int64)
    child_pos = np.zeros(n, dtype=np.int64)
    depth = 0
    expand = True
    while depth >= 0:
        if expand:
            expand = False
            nodes += 1
            if nodes >= node_limit or (nodes % 1024 == 0 and _now() > deadline):
                stopped = True
                break
            limit = best_value - tol
            if depth == n - 1:  # the children are leaves: their values are exact
                for k in range(counts[depth]):
                    total = base_obj + acc[depth] + obj[depth, k]
                    if total < limit:
                        fits = True
                        for r in range(num_rows):
                            if used[depth, r] + rows[depth, k, r] > room_rows[depth, r]:
                                fits = False
                                break
                        if fits:
                            limit = total
                            best_value = total
                            current[depth] = ks[depth, k]
                            best_choice[:] = current
                            found = True
                depth -= 1
                continue
            nxt = depth + 1
            count = 0
            for k in range(counts[depth]):
                fits = True
                for r in range(num_rows):
                    if used[depth, r] + rows[depth, k, r] > room_rows[depth, r]:
                        fits = False
                        break
                if not fits:
                    continue
                here = acc[depth] + obj[depth, k]
                b = -np.inf
                for t in range(num_tables):
                    lo = start[t, nxt]
                    hi = lo + length[t, nxt]
                    room = rooms[depth, t] - weight[depth, k, t]
                    j = np.searchsorted(usage[lo:hi], room, side="right") - 1
                    if j < 0:
                        b = np.inf
                        break
                    bt = bases[depth, t] + here + price[depth, k, t] + value[lo + j]
                    if bt > b:
                        b = bt
                        if b >= limit:
                            break
                if b < limit:  # insert in bound order, after equal bounds
                    i = count
                    while i > 0 and child_b[depth, i - 1] > b:
                        child_b[depth, i] = child_b[depth, i - 1]
                        child_k[depth, i] = child_k[depth, i - 1]
                        i -= 1
                    child_b[depth, i] = b
                    child_k[depth, i] = k
                    count += 1
            child_count[depth] = count
            child_pos[depth] = 0
        i = child_pos[depth]
        if i >= child_count[depth] or child_b[depth, i] >= best_value - tol:
            depth -= 1
            continue
        child_pos[depth] = i + 1
        k = child_k[depth, i]
        current[depth] = ks[depth, k]
        nxt = depth + 1
        acc[nxt] = acc[depth] + obj[depth, k]
        for r in range(num_rows):
            used[nxt, r] = used[depth, r] + rows[depth, k, r]
        for t in range(num_tables):
            rooms[nxt, t] = rooms[depth, t] - weight[depth, k, t]
            bases[nxt, t] = bases[depth, t] + price[depth, k, t]
        depth = nxt
        expand = True
    return found, best_choice, best_value, nodes, not stopped


def warm_up() -> None:
    """Compile (or load from the cache) every kernel on a two-group problem,
    so the first real request does not wait for it."""
    n, k = 2, 2
    weight = np.array([[0.0, 1.0], [0.0, 1.0]])
    counts = np.full(n, k, dtype=np.int64)
    cost_x = np.tile(np.array([-10.0, 0.0, 10.0]), (n + 1, 1))
    cost_c = np.zeros((n + 1, 3))
    status, usage, value, start, length, _ = suffix_states(
        weight, weight.copy(), weight.copy(), counts, cost_x, cost_c, np.zeros(n + 1), 1.0,
        np.inf, 100, np.inf,
    )  # fmt: skip
    assert status == TABLES_OK
    search_core(
        weight.copy(),
        weight[:, :, None].copy(),
        np.tile(np.arange(k), (n, 1)),
        counts,
        weight[:, :, None].copy(),
        np.zeros((n, k, 1)),
        usage,
        value,
        start[None],
        length[None],
        np.array([1.0]),
        np.zeros(1),
        np.ones((n, 1)),
        0.0,
        np.inf,
        0.0,
        1000,
        np.inf,
    )
