"""From a ``Problem`` to the arrays the engines solve, with the cheap reductions.

Two steps, each a pure function:

1. ``prepare(problem)`` once per problem: ties become one group (a
   "super-layer" whose option costs are the sums over its members, so the
   multiple-choice structure survives), pins cut a group's options, and every
   cost lands in one ``[rows, options]`` float64 array, the groups' options
   one after another (``offsets[g]`` is group ``g``'s first column). Frontier
   sweeps and what-if queries reuse it.
2. ``build_instance(prepared, objective, budgets)`` per request: picks the
   objective row and the constrained rows, subtracts the fixed costs from the
   limits and removes options dominated on every axis that matters for *this*
   request (objective and constrained rows): an option no better anywhere than
   another of its group can never be needed by an optimum. Only then are the
   options laid out dense, ``[groups, widest pruned group]``, as the engines
   take them.

Why sparse until the request: the engines' dense layout pads every group to
the widest one, so 20,000 layers of 4 options and one of 256 (2.5 MB on the
wire) took 573 MiB to prepare, 287 MiB kept, and the registry keeps up to 64
problems. Stored flat, memory is linear in the options sent: the same
problem is 4.5 MiB of costs (14 MiB at the peak of ``prepare``). The dense
size is paid per request only, after pruning, where a wide layer rarely keeps
more than a handful of options (``max_dense_cells`` caps it there).

The average-weight-bits budget is linear once multiplied out:
``sum_l P_l b_w(l) + P_fixed b_fixed <= bits * (sum_l P_l + P_fixed)`` over the
searched and the fixed layers, so its row holds ``P_l * b_w`` per option.

What the size and bits budgets count follows ``Problem.size_accounting``: by
default the ``size_bytes`` row is codes plus scales and the bits row adds
``8 * scale_bytes``; with ``"weights_only"`` both leave the scales out. The
``code_bytes`` and ``scale_bytes`` rows keep the two parts for the totals.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from bitmesh.errors import InvalidArgument, ResourceExhausted
from solver_svc.problem import Problem
from solver_svc.spec import Budgets, check_objective

__all__ = [
    "ROWS",
    "Instance",
    "PreparedProblem",
    "build_instance",
    "dominated_mask",
    "limits_for",
    "prepare",
    "sparse_dominated",
]

#: The setting that caps an instance's dense cells (solver_svc/limits.py).
DENSE_CELLS_SETTING = "BITMESH_SOLVER_MAX_DENSE_CELLS"
#: Row order of ``PreparedProblem.values``.
ROWS: tuple[str, ...] = (
    "size_bytes",
    "bops",
    "latency_ms",
    "wbits",
    "omega",
    "scale_bytes",
    "code_bytes",
)
_ROW = {name: i for i, name in enumerate(ROWS)}
#: Budget axis -> row it constrains.
_AXIS_ROW = {
    "size_bytes": "size_bytes",
    "bops": "bops",
    "latency_ms": "latency_ms",
    "avg_weight_bits": "wbits",
    "omega": "omega",
}


@dataclass(frozen=True, eq=False)
class PreparedProblem:
    """A problem with ties merged and pins applied, stored sparse.

    ``values[r, offsets[g] + k]`` is row ``ROWS[r]`` of option ``k`` of group
    ``g``: the groups' options lie one after another, so the array has one
    column per option kept (no padding); ``keys[g][k]`` names the option and
    ``members[g]`` the layer names that take group ``g``'s option.
    ``fixed[r]`` is the fixed layers' part of each row.
    """

    problem: Problem
    members: tuple[tuple[str, ...], ...]
    keys: tuple[tuple[str, ...], ...]
    values: np.ndarray
    offsets: np.ndarray
    fixed: np.ndarray
    total_parameters: float

    @property
    def num_groups(self) -> int:
        return len(self.members)

    @property
    def num_options(self) -> int:
        """Options stored (columns of ``values``): what the problem costs in memory."""
        return int(self.offsets[-1])

    @property
    def widths(self) -> np.ndarray:
        """Options per group."""
        return np.diff(self.offsets)

    def columns(self, choice: np.ndarray) -> np.ndarray:
        """Columns of ``values`` of one option index per group."""
        return self.offsets[:-1] + choice


@dataclass(frozen=True, eq=False)
class Instance:
    """One multiple-choice knapsack: minimise ``sum obj[g, x_g]`` subject to
    ``sum rows[i, g, x_g] <= limits[i]`` for every row ``i``.

    ``obj`` is ``+inf`` at invalid entries and ``rows`` 0 there;
    ``option_index[g, k]`` maps back to the prepared option (-1 for padding).
    ``obj_offset`` is added to ``sum obj`` to give the reported objective.
    """

    obj: np.ndarray
    rows: np.ndarray
    limits: np.ndarray
    row_axes: tuple[str, ...]
    option_index: np.ndarray
    valid: np.ndarray
    obj_offset: float
    objective: str

    @property
    def num_groups(self) -> int:
        return int(self.obj.shape[0])

    def with_limits(self, limits: np.ndarray) -> Instance:
        return Instance(
            obj=self.obj,
            rows=self.rows,
            limits=np.asarray(limits, dtype=np.float64),
            row_axes=self.row_axes,
            option_index=self.option_index,
            valid=self.valid,
            obj_offset=self.obj_offset,
            objective=self.objective,
        )


def _groups(problem: Problem) -> list[list[int]]:
    """Union-find over ties: overlapping ties collapse into one group."""
    index = {layer.name: i for i, layer in enumerate(problem.layers)}
    parent = list(range(len(problem.layers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in problem.ties:
        root = find(index[tie[0]])
        for name in tie[1:]:
            other = find(index[name])
            if other != root:
                parent[other] = root
    groups: dict[int, list[int]] = {}
    for i in range(len(problem.layers)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def prepare(problem: Problem) -> PreparedProblem:
    """Merge ties, apply pins and store the costs flat (see the module doc).

    Memory stays linear in the options: the costs go into an ``array("d")``
    (8 bytes a number, no Python float kept per cost) and become one numpy
    array at the end; element-wise numpy writes had made this the largest
    part of a 54-layer solve's set-up.
    """
    pins = problem.pin_map()
    groups = _groups(problem)
    members: list[tuple[str, ...]] = []
    keys: list[tuple[str, ...]] = []
    for group in groups:
        layers = [problem.layers[i] for i in group]
        allowed = list(layers[0].keys)
        for layer in layers:
            if layer.name in pins:
                pinned = set(pins[layer.name])
                allowed = [k for k in allowed if k in pinned]
        if not allowed:
            names = [layer.name for layer in layers]
            raise InvalidArgument(f"the pins of tied layers {names} leave no option they all allow")
        members.append(tuple(layer.name for layer in layers))
        keys.append(tuple(allowed))
    offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    num_options = int(offsets[-1])
    # The share of the scales in the budgeted rows (0 for weights-only budgets).
    share = 1.0 if problem.size_accounting == "weights_and_scales" else 0.0
    cells = array("d")  # 7 numbers (``ROWS``) per member option, group by group
    tied = False
    for g, group in enumerate(groups):
        tied = tied or len(group) > 1
        for member in group:
            layer = problem.layers[member]
            p = layer.parameters
            options = layer.options
            if len(options) != len(keys[g]) or any(
                o.key != key for o, key in zip(options, keys[g], strict=True)
            ):
                by_key = {o.key: o for o in options}
                options = tuple(by_key[key] for key in keys[g])
            for o in options:
                cells.extend(
                    (
                        o.size_bytes + share * o.scale_bytes,
                        o.bops,
                        o.latency_ms,
                        p * o.weight_bits + share * 8 * o.scale_bytes,
                        o.omega,
                        o.scale_bytes,
                        o.size_bytes,
                    )
                )
    by_option = np.frombuffer(cells, dtype=np.float64).reshape(-1, len(ROWS))
    if tied:
        # Tied members add up, in member order (``np.add.at`` accumulates
        # repeated columns): each member of group g lists its options in
        # the group's key order, so each fills columns offsets[g]:offsets[g+1].
        at = np.concatenate(
            [
                np.tile(np.arange(offsets[g], offsets[g + 1]), len(group))
                for g, group in enumerate(groups)
            ]
        )
        summed = np.zeros((num_options, len(ROWS)), dtype=np.float64)
        np.add.at(summed, at, by_option)
        by_option = summed
    values = np.ascontiguousarray(by_option.T)
    del by_option, cells
    f = problem.fixed
    fixed = np.array(
        [
            f.size_bytes + share * f.scale_bytes,
            f.bops,
            f.latency_ms,
            f.parameters * f.weight_bits + share * 8 * f.scale_bytes,
            0.0,
            f.scale_bytes,
            f.size_bytes,
        ],
        dtype=np.float64,
    )
    total_parameters = float(sum(layer.parameters for layer in problem.layers) + f.parameters)
    return PreparedProblem(
        problem=problem,
        members=tuple(members),
        keys=tuple(keys),
        values=values,
        offsets=offsets,
        fixed=fixed,
        total_parameters=total_parameters,
    )


def dominated_mask(obj: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``True`` where an option is dominated within its group.

    Option ``i`` is dominated by ``j`` when ``j`` is no worse on the objective
    and on every row, and either strictly better somewhere or equal everywhere
    with a lower index (so exactly one of a set of identical options stays).
    Invalid entries count as dominated. Works in chunks of groups to bound
    memory at ``groups * options^2``.
    """
    num_groups, width = obj.shape
    stacked = np.concatenate([obj[None], rows], axis=0)  # [m+1, G, K]
    out = ~valid.copy()
    chunk = max(1, int(4_000_000 // max(1, width * width * stacked.shape[0])))
    lower = np.tril(np.ones((width, width), dtype=bool), k=-1)  # [i, j]: j < i
    for start in range(0, num_groups, chunk):
        s = stacked[:, start : start + chunk]  # [m+1, c, K]
        v = valid[start : start + chunk]
        a_i = s[:, :, :, None]  # option i
        a_j = s[:, :, None, :]  # candidate dominator j
        no_worse = (a_j <= a_i).all(axis=0)
        strictly = (a_j < a_i).any(axis=0)
        dom = no_worse & (strictly | lower[None]) & v[:, None, :] & v[:, :, None]
        out[start : start + chunk] |= dom.any(axis=2)
    return out


def sparse_dominated(stacked: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``dominated_mask`` of every group of a flat layout: ``stacked[:, j]``
    is option ``j``'s objective and rows (``[m+1, options]``), group ``g``
    columns ``offsets[g]:offsets[g+1]``; ``True`` where dominated.

    Groups of equal width are compared together, one ``[groups, w, w]``
    comparison per width, so 20,000 small groups cost a few array operations
    and one wide group costs only its own ``w^2``, never everyone's.
    """
    widths = np.diff(offsets)
    out = np.zeros(stacked.shape[1], dtype=bool)
    for width in np.unique(widths):
        if width < 2:
            continue  # a lone option is never dominated
        starts = offsets[:-1][widths == width]
        cols = starts[:, None] + np.arange(width)  # [groups of this width, width]
        s = stacked[:, cols]
        out[cols] = dominated_mask(s[0], s[1:], np.ones(cols.shape, dtype=bool))
    return out


def _axis_coefficients(prepared: PreparedProblem, axis: str) -> tuple[np.ndarray, float, float]:
    """(coefficients [options], fixed part, divisor) of an axis's total."""
    row = _ROW[_AXIS_ROW[axis]]
    if axis == "avg_weight_bits":
        if prepared.total_parameters <= 0:
            raise InvalidArgument(
                "the average-weight-bits axis needs parameter counts; every layer has 0 parameters"
            )
        return prepared.values[row], float(prepared.fixed[row]), prepared.total_parameters
    return prepared.values[row], float(prepared.fixed[row]), 1.0


def limits_for(prepared: PreparedProblem, budgets: Budgets) -> np.ndarray:
    """The rows' limits (fixed parts subtracted) in ``budgets.items()`` order."""
    out = []
    for axis, limit in budgets.items():
        _, fixed_part, div = _axis_coefficients(prepared, axis)
        out.append(limit * div - fixed_part)
    return np.asarray(out, dtype=np.float64)


def build_instance(
    prepared: PreparedProblem,
    objective: str,
    budgets: Budgets,
    *,
    prune: bool = True,
    max_dense_cells: int | None = None,
) -> Instance:
    """The knapsack for one request (see the module doc): pruned on the
    sparse layout, then laid out dense from the options kept.

    ``max_dense_cells`` caps the dense instance (groups x the widest group
    left after pruning): past it the request is RESOURCE_EXHAUSTED, naming
    the setting, before the dense arrays are made.
    """
    check_objective(objective)
    coeff, offset, divisor = _axis_coefficients(prepared, objective)
    obj = coeff / divisor
    obj_offset = offset / divisor
    row_axes: list[str] = []
    row_list: list[np.ndarray] = []
    limits: list[float] = []
    for axis, limit in budgets.items():
        c, fixed_part, div = _axis_coefficients(prepared, axis)
        row_axes.append(axis)
        row_list.append(c)
        limits.append(limit * div - fixed_part)
    offsets = prepared.offsets
    num_groups = prepared.num_groups
    rows = np.stack(row_list) if row_list else np.zeros((0, prepared.num_options))
    if prune:
        kept = np.flatnonzero(~sparse_dominated(np.concatenate([obj[None], rows]), offsets))
    else:
        kept = np.arange(prepared.num_options)
    group = np.repeat(np.arange(num_groups), prepared.widths)[kept]
    counts = np.bincount(group, minlength=num_groups)
    width = int(counts.max())
    if max_dense_cells is not None and num_groups * width > max_dense_cells:
        raise ResourceExhausted(
            f"the request has {num_groups * width:,} dense cells ({num_groups:,} layer groups x "
            f"{width:,} options in the widest one left after removing dominated options, the "
            f"arrays the engines solve on); the cap is {max_dense_cells:,} "
            f"({DENSE_CELLS_SETTING}); offer fewer options in the widest layers, or ask the "
            "operator to raise the cap"
        )
    starts = np.zeros(num_groups, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    slot = np.arange(kept.size) - starts[group]
    option_index = np.full((num_groups, width), -1, dtype=np.int64)
    option_index[group, slot] = kept - offsets[group]
    new_obj = np.full((num_groups, width), np.inf)
    new_obj[group, slot] = obj[kept]
    new_rows = np.zeros((rows.shape[0], num_groups, width))
    new_rows[:, group, slot] = rows[:, kept]
    return Instance(
        obj=new_obj,
        rows=new_rows,
        limits=np.asarray(limits, dtype=np.float64),
        row_axes=tuple(row_axes),
        option_index=option_index,
        valid=option_index >= 0,
        obj_offset=obj_offset,
        objective=objective,
    )
