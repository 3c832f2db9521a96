"""Problems are stored sparse: memory linear in the options sent (issue 16).

Three things are checked. A problem of 20,000 four-option layers and one
256-option layer (2.5 MB on the wire, 573 MiB to lay out dense) is prepared
in memory linear in its options and solved. The instances built from the
sparse layout equal, array for array, those of a plain dense reference written
here (so every engine sees what it saw before). The registry evicts by the
options it stores, not by a dense size.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import ResourceExhausted
from solver_svc.presolve import ROWS, Instance, build_instance, prepare
from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from solver_svc.registry import ProblemRegistry
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets

pytestmark = pytest.mark.unit

SMALL, WIDE = 20_000, 256
AXES = ("size_bytes", "bops", "latency_ms", "avg_weight_bits", "omega")


def wide_problem(seed: int = 0, small: int = SMALL, wide: int = WIDE) -> Problem:
    """``small`` quantization-shaped layers of 4 options (Omega falls as size
    grows: all 4 are Pareto-optimal) and one layer of ``wide`` options of
    random Omega and size (a few are Pareto-optimal)."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(small):
        params = int(rng.integers(1_000, 100_000))
        trace = float(rng.lognormal(-6, 1.5))
        options = tuple(
            OptionCost(
                key=f"w{bits}",
                omega=trace * params * 2.0 ** (-2 * bits) * float(rng.lognormal(0, 0.2)),
                size_bytes=params * bits / 8,
                bops=params * bits * 8.0,
                weight_bits=float(bits),
            )
            for bits in (2, 4, 6, 8)
        )
        layers.append(LayerChoice(f"l{i}", params, options))
    options = tuple(
        OptionCost(
            key=f"o{k}",
            omega=float(rng.lognormal(0, 1)),
            size_bytes=float(rng.uniform(6_250, 50_000)),
            bops=float(rng.uniform(1e5, 1e6)),
            weight_bits=8.0,
        )
        for k in range(wide)
    )
    layers.append(LayerChoice("wide", 50_000, options))
    return Problem(layers=tuple(layers), name="wide")


def _size_between(problem: Problem, ratio: float) -> float:
    lo = sum(min(o.size_bytes for o in layer.options) for layer in problem.layers)
    hi = sum(max(o.size_bytes for o in layer.options) for layer in problem.layers)
    return lo + ratio * (hi - lo)


@pytest.fixture(scope="module")
def wide() -> Problem:
    return wide_problem()


def test_the_wide_problem_is_prepared_in_memory_linear_in_its_options(wide: Problem) -> None:
    options = SMALL * 4 + WIDE
    linear = options * len(ROWS) * 8  # the costs alone, 8 bytes each
    dense = (SMALL + 1) * WIDE * len(ROWS) * 8  # what the padded layout took
    tracemalloc.start()
    try:
        prepared = prepare(wide)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prepared.num_options == options
    assert prepared.values.shape == (len(ROWS), options)
    assert peak < 5 * linear, f"prepare peaked at {peak / 2**20:.1f} MiB"
    assert peak < dense / 10  # the padded layout peaked at twice ``dense``


def test_the_wide_problem_solves_and_its_wide_layer_is_pruned(wide: Problem) -> None:
    solver = ProblemSolver(prepare(wide), max_dense_cells=1_000_000)
    limit = _size_between(wide, 0.4)
    sol = solver.solve(Budgets(size_bytes=limit), time_limit_s=120)
    assert sol.status == "optimal"
    assert sol.totals.size_bytes <= limit * (1 + 1e-9)
    assert sol.lower_bound <= sol.objective_value * (1 + 1e-9)
    inst = solver.instance("omega", Budgets(size_bytes=limit))
    # The engines see the 4 options of every small layer and the few of the
    # wide one that nothing beats on both Omega and size.
    width = inst.obj.shape[1]
    assert 4 <= width < 32
    assert inst.num_groups * width <= 1_000_000
    # Cheaper than the optimum: every layer at its smallest option.
    assert sol.total_omega < solver.solve(Budgets(size_bytes=_size_between(wide, 0.0))).total_omega


def test_a_wide_layer_that_keeps_its_options_is_refused_on_the_pruned_instance() -> None:
    """256 options on a strict trade-off (none dominated) pad every layer to
    256: past the dense cap the solve is RESOURCE_EXHAUSTED naming the setting,
    while a budget on fewer axes of the same problem may still fit."""
    small = tuple(LayerChoice(f"l{i}", 10, (OptionCost("a", 1.0, 1.0, 1.0),)) for i in range(4_000))
    curve = tuple(
        OptionCost(f"o{k}", omega=float(256 - k), size_bytes=float(k), bops=float(k % 7))
        for k in range(256)
    )
    problem = Problem(layers=(*small, LayerChoice("wide", 10, curve)))
    solver = ProblemSolver(problem, max_dense_cells=100_000)
    with pytest.raises(ResourceExhausted, match="BITMESH_SOLVER_MAX_DENSE_CELLS") as caught:
        solver.solve(Budgets(size_bytes=100.0))
    assert "1,024,256 dense cells" in caught.value.message
    assert "the cap is 100,000" in caught.value.message
    # Size against BOPs: o0 beats every other option on both, so nothing pads.
    sol = solver.solve(Budgets(bops=1e9), objective="size_bytes")
    assert sol.assignment["wide"] == "o0"


# -- sparse == dense ------------------------------------------------------------


def _random_problem(rng: np.random.Generator) -> Problem:
    """Small problems with uneven widths, ties, pins, repeated options (to
    exercise the tie-break of equal options) and fixed costs."""
    num_layers = int(rng.integers(1, 9))
    pool = [f"k{j}" for j in range(8)]
    layers = []
    for i in range(num_layers):
        width = int(rng.integers(1, 8))
        keys = [str(k) for k in rng.permutation(pool)[:width]]
        options = []
        for key in keys:
            values = rng.choice([0.0, 1.0, 2.0, 3.0], 6) if rng.random() < 0.3 else rng.random(6)
            options.append(
                OptionCost(
                    key=key,
                    omega=float(values[0] - 0.5),
                    size_bytes=float(values[1]),
                    bops=float(values[2]),
                    latency_ms=float(values[3]),
                    weight_bits=float(4 * values[4]),
                    scale_bytes=float(values[5]),
                )
            )
        layers.append(LayerChoice(f"l{i}", int(rng.integers(0, 50)), tuple(options)))
    ties: list[tuple[str, ...]] = []
    if num_layers > 1 and rng.random() < 0.5:
        a, b = (int(x) for x in rng.choice(num_layers, 2, replace=False))
        same = [
            OptionCost(
                key=o.key,
                omega=float(rng.random()),
                size_bytes=o.size_bytes,
                bops=float(rng.random()),
                scale_bytes=o.scale_bytes,
            )
            for o in reversed(layers[a].options)
        ]
        layers[b] = LayerChoice(layers[b].name, layers[b].parameters, tuple(same))
        ties.append((layers[a].name, layers[b].name))
    pins = []
    for layer in layers:
        if len(layer.options) > 2 and rng.random() < 0.3 and not any(layer.name in t for t in ties):
            pins.append((layer.name, tuple(o.key for o in layer.options[1:])))
    fixed = FixedCosts(
        size_bytes=float(rng.random()),
        bops=float(rng.random()),
        scale_bytes=float(rng.random()),
        parameters=int(rng.integers(0, 20)),
        weight_bits=8.0,
    )
    accounting = "weights_only" if rng.random() < 0.3 else "weights_and_scales"
    return Problem(
        layers=tuple(layers),
        fixed=fixed,
        ties=tuple(ties),
        pins=tuple(pins),
        size_accounting=accounting,  # type: ignore[arg-type]
    )


def _dense_reference(
    problem: Problem, objective: str, budgets: Budgets, *, prune: bool = True
) -> Instance:
    """The instance as the padded layout built it, written plainly: every
    group's options (ties summed, pins applied) padded to the widest, dominated
    options dropped by pairwise comparison, the rest packed left in order."""
    prepared = prepare(problem)  # for the groups and their keys only
    share = 1.0 if problem.size_accounting == "weights_and_scales" else 0.0
    by_name = {layer.name: layer for layer in problem.layers}
    total_params = sum(layer.parameters for layer in problem.layers) + problem.fixed.parameters
    f = problem.fixed

    def axis_value(axis: str, parts: list[tuple[OptionCost, int]]) -> float:
        total = 0.0
        for o, params in parts:
            total += {
                "size_bytes": o.size_bytes + share * o.scale_bytes,
                "bops": o.bops,
                "latency_ms": o.latency_ms,
                "avg_weight_bits": params * o.weight_bits + share * 8 * o.scale_bytes,
                "omega": o.omega,
            }[axis]
        return total

    fixed_part = {
        "size_bytes": f.size_bytes + share * f.scale_bytes,
        "bops": f.bops,
        "latency_ms": f.latency_ms,
        "avg_weight_bits": f.parameters * f.weight_bits + share * 8 * f.scale_bytes,
        "omega": 0.0,
    }
    divisor = {axis: 1.0 for axis in AXES} | {"avg_weight_bits": float(total_params)}
    axes = [axis for axis, _ in budgets.items()]
    groups = []  # per group: [(objective, rows...) per option]
    for members, keys in zip(prepared.members, prepared.keys, strict=True):
        options = []
        for key in keys:
            parts = [
                (next(o for o in by_name[m].options if o.key == key), by_name[m].parameters)
                for m in members
            ]
            value = axis_value(objective, parts) / divisor[objective]
            options.append((value, *(axis_value(a, parts) for a in axes)))
        groups.append(options)
    kept = []
    for options in groups:
        keep = []
        for i, a_i in enumerate(options):
            dominated = prune and any(
                all(x <= y for x, y in zip(a_j, a_i, strict=True))
                and (any(x < y for x, y in zip(a_j, a_i, strict=True)) or j < i)
                for j, a_j in enumerate(options)
                if j != i
            )
            if not dominated:
                keep.append(i)
        kept.append(keep)
    width = max(len(k) for k in kept)
    obj = np.full((len(groups), width), np.inf)
    rows = np.zeros((len(axes), len(groups), width))
    index = np.full((len(groups), width), -1, dtype=np.int64)
    for g, keep in enumerate(kept):
        for slot, k in enumerate(keep):
            obj[g, slot] = groups[g][k][0]
            rows[:, g, slot] = groups[g][k][1:]
            index[g, slot] = k
    return Instance(
        obj=obj,
        rows=rows,
        limits=np.array(
            [limit * divisor[a] - fixed_part[a] for a, limit in budgets.items()], dtype=np.float64
        ),
        row_axes=tuple(axes),
        option_index=index,
        valid=index >= 0,
        obj_offset=fixed_part[objective] / divisor[objective],
        objective=objective,
    )


def _assert_same(inst: Instance, ref: Instance) -> None:
    assert inst.row_axes == ref.row_axes and inst.objective == ref.objective
    assert inst.obj_offset == ref.obj_offset
    for name in ("obj", "rows", "limits", "option_index", "valid"):
        got, want = getattr(inst, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_sparse_instances_equal_the_dense_reference_on_random_problems() -> None:
    rng = np.random.default_rng(16)
    for _ in range(150):
        problem = _random_problem(rng)
        if problem.fixed.parameters + sum(layer.parameters for layer in problem.layers) == 0:
            continue  # no average-bits axis to draw
        objective = str(rng.choice(AXES))
        drawn = [str(a) for a in rng.permutation(AXES)[: int(rng.integers(0, 4))]]
        budgets = Budgets(**{a: float(rng.random() * 10) for a in drawn})
        prepared = prepare(problem)
        for prune in (True, False):
            _assert_same(
                build_instance(prepared, objective, budgets, prune=prune),
                _dense_reference(problem, objective, budgets, prune=prune),
            )


# -- registry -----------------------------------------------------------------


def _one_wide_layer(seed: int, small: int = 50, wide: int = 50) -> Problem:
    """``small`` one-option layers and one of ``wide``: ``small + wide``
    options stored, ``(small + 1) * wide`` cells dense."""
    layers = [
        LayerChoice(f"s{seed}-{i}", 1, (OptionCost("a", 1.0, 1.0, 1.0),)) for i in range(small)
    ]
    curve = tuple(OptionCost(f"o{k}", float(wide - k), float(k), 0.0) for k in range(wide))
    return Problem(layers=(*layers, LayerChoice(f"w{seed}", 1, curve)), name=f"wide-{seed}")


def test_the_registry_evicts_by_stored_options(tmp_path: Path) -> None:
    """Three problems of 100 stored options (2,550 dense cells each): a cap of
    260 options keeps two, whatever their padded size would be, and a pinned
    problem counts only the options its pins leave."""
    problems = [_one_wide_layer(seed) for seed in range(3)]
    registry = ProblemRegistry(
        ArtifactStore(str(tmp_path)), background=False, max_loaded_options=260
    )
    loaded = [registry.register(p) for p in problems]
    assert [p.solver.prepared.num_options for p in loaded] == [100, 100, 100]
    with registry._lock:
        assert list(registry._loaded) == [loaded[1].problem_id, loaded[2].problem_id]
        assert registry.loaded_options() == 200
    pinned = registry.register(
        Problem(layers=problems[0].layers, pins=(("w0", ("o1",)),), name="pinned")
    )
    assert pinned.solver.prepared.num_options == 51
    with registry._lock:
        assert list(registry._loaded) == [
            loaded[1].problem_id,
            loaded[2].problem_id,
            pinned.problem_id,
        ]
        assert registry.loaded_options() == 251
    registry.register(problems[0])  # back from the artifact store: the oldest leaves
    with registry._lock:
        assert list(registry._loaded) == [
            loaded[2].problem_id,
            pinned.problem_id,
            loaded[0].problem_id,
        ]


def test_a_problem_keeps_few_instances_and_bounded_cells() -> None:
    """Instances are cached per objective and axes, least recently used out:
    by count, and by their cells against the per-instance cap (the registry
    counts stored options only, so this bounds what solves add on top)."""
    from itertools import combinations

    from solver_svc.solve import CACHED_CELLS_FACTOR, MAX_CACHED_INSTANCES

    problem = _random_problem(np.random.default_rng(3))
    axes = ("size_bytes", "bops", "latency_ms", "avg_weight_bits")
    patterns = [c for n in range(1, 5) for c in combinations(axes, n)]
    solver = ProblemSolver(problem)
    for pattern in patterns:  # 15 patterns, every one a new instance
        solver.instance("omega", Budgets(**dict.fromkeys(pattern, 1e9)))
    assert len(solver._instances) == MAX_CACHED_INSTANCES
    newest = ("omega", patterns[-1])
    assert next(reversed(solver._instances)) == newest
    # A hit moves an instance to the back, so it survives the next insertions.
    oldest = next(iter(solver._instances))
    solver.instance("omega", Budgets(**dict.fromkeys(oldest[1], 1e9)))
    solver.instance("size_bytes", Budgets(bops=1e9))
    assert oldest in solver._instances

    free = ProblemSolver(problem)
    sizes = [free.instance("omega", Budgets(**dict.fromkeys(p, 1e9))).obj.size for p in patterns]
    tight = ProblemSolver(problem, max_dense_cells=max(sizes))
    for pattern in patterns:
        tight.instance("omega", Budgets(**dict.fromkeys(pattern, 1e9)))
        assert tight.cached_cells() <= CACHED_CELLS_FACTOR * max(sizes)
    assert 1 <= len(tight._instances) < MAX_CACHED_INSTANCES
