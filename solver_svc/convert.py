"""proto <-> domain conversion for the solver (the only place that sees protos)."""

from __future__ import annotations

from typing import Any

from bitmesh.errors import InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.rpc.convert import (
    option_from_pb,
    option_to_pb,
    size_accounting_from_pb,
    size_accounting_to_pb,
)
from bitmesh.v1 import common_pb2, solver_pb2
from solver_svc.limits import SolverLimits
from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from solver_svc.solution import Solution
from solver_svc.spec import Budgets

AXIS_FROM_PB: dict[int, str] = {
    common_pb2.COST_AXIS_SIZE: "size_bytes",
    common_pb2.COST_AXIS_BOPS: "bops",
    common_pb2.COST_AXIS_LATENCY: "latency_ms",
    common_pb2.COST_AXIS_AVG_WEIGHT_BITS: "avg_weight_bits",
}
AXIS_TO_PB: dict[str, Any] = {v: k for k, v in AXIS_FROM_PB.items()}
OBJECTIVE_FROM_PB: dict[int, str] = {
    solver_pb2.OBJECTIVE_UNSPECIFIED: "omega",
    solver_pb2.OBJECTIVE_MIN_OMEGA: "omega",
    solver_pb2.OBJECTIVE_MIN_SIZE: "size_bytes",
    solver_pb2.OBJECTIVE_MIN_BOPS: "bops",
    solver_pb2.OBJECTIVE_MIN_LATENCY: "latency_ms",
}
STATUS_TO_PB = {
    "optimal": solver_pb2.SOLVE_STATUS_OPTIMAL,
    "feasible": solver_pb2.SOLVE_STATUS_FEASIBLE,
    "infeasible": solver_pb2.SOLVE_STATUS_INFEASIBLE,
}


def _option_pb_for_key(key: str, given: common_pb2.QuantOption | None) -> common_pb2.QuantOption:
    if given is not None:
        return given
    try:
        return option_to_pb(parse_option(key))
    except InvalidArgument:  # a key that is not a format label: report no formats
        return common_pb2.QuantOption()


def option_from_problem_pb(entry: solver_pb2.ProblemOption, layer: str) -> OptionCost:
    option = option_from_pb(entry.option) if entry.HasField("option") else None
    key = entry.key or (option.key if option else "")
    if not key:
        raise InvalidArgument(f"layer {layer!r}: an option has neither a key nor a format")
    weight_bits = float(entry.weight_bits or (option.weight_bits if option else 0))
    return OptionCost(
        key=key,
        omega=entry.omega,
        size_bytes=entry.costs.size_bytes,
        bops=entry.costs.bops,
        latency_ms=entry.costs.latency_ms,
        weight_bits=weight_bits,
        weight_format=option.weight.name if option else "",
        act_format=option.activation.name if option else "",
        granularity=option.granularity.value if option else "",
        scale_bytes=entry.costs.scale_bytes,
    )


def problem_from_pb(msg: solver_pb2.Problem, limits: SolverLimits | None = None) -> Problem:
    """The domain problem; with ``limits``, a problem over a cap is refused on
    the message's counts, before any option object or array is built."""
    if limits is not None:
        widths = [len(layer.options) for layer in msg.layers]
        limits.check_problem_shape(len(widths), max(widths, default=0), sum(widths))
    layers = tuple(
        LayerChoice(
            name=layer.name,
            parameters=layer.parameters,
            options=tuple(option_from_problem_pb(o, layer.name) for o in layer.options),
        )
        for layer in msg.layers
    )
    fixed = FixedCosts(
        size_bytes=msg.fixed_costs.size_bytes,
        bops=msg.fixed_costs.bops,
        latency_ms=msg.fixed_costs.latency_ms,
        scale_bytes=msg.fixed_costs.scale_bytes,
        parameters=msg.fixed_parameters,
        weight_bits=msg.fixed_weight_bits,
    )
    return Problem(
        layers=layers,
        fixed=fixed,
        ties=tuple(tuple(t.layers) for t in msg.ties),
        pins=tuple((p.layer, tuple(p.allowed_keys)) for p in msg.pins),
        name=msg.name,
        size_accounting=size_accounting_from_pb(msg.size_accounting),
    )


def budgets_from_pb(msg: common_pb2.Budgets, max_omega: float | None = None) -> Budgets:
    return Budgets(
        size_bytes=msg.max_size_bytes if msg.HasField("max_size_bytes") else None,
        bops=msg.max_bops if msg.HasField("max_bops") else None,
        latency_ms=msg.max_latency_ms if msg.HasField("max_latency_ms") else None,
        avg_weight_bits=msg.max_avg_weight_bits if msg.HasField("max_avg_weight_bits") else None,
        omega=max_omega,
    )


def axis_from_pb(axis: int) -> str:
    name = AXIS_FROM_PB.get(axis)
    if name is None:
        raise InvalidArgument("frontier axis is missing: SIZE, BOPS, LATENCY or AVG_WEIGHT_BITS")
    return name


def _assignment_pb(layer: str, key: str, cost: OptionCost | None) -> solver_pb2.Assignment:
    """One layer's entry of an answer: its option key and, when known, formats."""
    given = None
    if cost is not None and cost.weight_format:
        try:
            given = option_to_pb(parse_option(f"{cost.weight_format}/{cost.act_format}"))
            if cost.granularity == "per_tensor" and given.granularity != (
                common_pb2.GRANULARITY_PER_BLOCK
            ):
                given.granularity = common_pb2.GRANULARITY_PER_TENSOR
        except InvalidArgument:
            given = None
    return solver_pb2.Assignment(layer=layer, option_key=key, option=_option_pb_for_key(key, given))


def _solution_head_pb(solution: Solution, problem_id: str) -> solver_pb2.Solution:
    """Everything of an answer but its assignment."""
    totals = solution.totals
    return solver_pb2.Solution(
        status=STATUS_TO_PB[solution.status],
        gap=solution.gap,
        total_omega=solution.total_omega,
        totals=common_pb2.LayerCosts(
            size_bytes=totals.size_bytes,
            bops=totals.bops,
            latency_ms=totals.latency_ms,
            scale_bytes=totals.scale_bytes,
        ),
        avg_weight_bits=solution.avg_weight_bits,
        seconds=solution.seconds,
        engine=solution.engine,
        answered_from=solution.answered_from,
        problem_id=problem_id,
        size_accounting=size_accounting_to_pb(totals.size_accounting),
    )


#: Answers whose bytes one encoder keeps (a 54-layer answer is ~2-3 KB).
MAX_KEPT_ANSWERS = 4096


class SolutionEncoder:
    """``solution_to_pb`` for one problem, each (layer, option) encoded once.

    Why: building an answer's 54 ``Assignment`` messages parses every option
    label through the format registry (a failed parse raises and is caught for
    keys that are not format labels): 1.7 ms per ResNet50-sized answer, where a
    what-if served from memory does ~50 us of other work. Here each (layer,
    key) entry is serialized the first time it is needed (as a one-entry
    ``Solution``, whose bytes are exactly that ``assignment`` field); an answer
    is its head's bytes plus the cached entries joined, parsed once (~12 us
    for 54 layers). Protobuf merges concatenated messages field by field and
    appends repeated entries in order, so the result equals
    ``solution_to_pb``'s message. Safe to share between threads: the cache only
    grows, and racing writers store equal bytes.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self._costs = {(layer.name, o.key): o for layer in problem.layers for o in layer.options}
        self._entries: dict[tuple[str, str], bytes] = {}
        # Whole answers asked for again (stored frontier points), by identity.
        self._answers: dict[int, tuple[Solution, str, bytes]] = {}

    def _entry(self, item: tuple[str, str]) -> bytes:
        entry = self._entries.get(item)
        if entry is None:
            assignment = _assignment_pb(item[0], item[1], self._costs.get(item))
            entry = solver_pb2.Solution(assignment=[assignment]).SerializeToString()
            self._entries[item] = entry
        return entry

    def _bytes(self, solution: Solution, problem_id: str) -> bytes:
        entries = self._entries
        parts = [_solution_head_pb(solution, problem_id).SerializeToString()]
        for item in solution.assignment.items():
            entry = entries.get(item)
            parts.append(entry if entry is not None else self._entry(item))
        return b"".join(parts)

    def encode(self, solution: Solution, problem_id: str = "") -> solver_pb2.Solution:
        return solver_pb2.Solution.FromString(self._bytes(solution, problem_id))

    def encode_kept(self, solution: Solution, problem_id: str = "") -> solver_pb2.Solution:
        """``encode`` for an answer that is kept and asked for again (a stored
        frontier point): its bytes are kept too, so a repeat is one parse
        (~6 us instead of ~12 us for 54 layers). Keyed by identity; the entry
        holds the solution, so its id cannot be reused while it is cached."""
        key = id(solution)
        cached = self._answers.get(key)
        if cached is not None and cached[0] is solution and cached[1] == problem_id:
            return solver_pb2.Solution.FromString(cached[2])
        data = self._bytes(solution, problem_id)
        if len(self._answers) >= MAX_KEPT_ANSWERS:
            self._answers.clear()
        self._answers[key] = (solution, problem_id, data)
        return solver_pb2.Solution.FromString(data)


def solution_to_pb(
    solution: Solution, problem: Problem, problem_id: str = ""
) -> solver_pb2.Solution:
    """One answer as a message (a registered problem's answers: :class:`SolutionEncoder`)."""
    options = {(layer.name, o.key): o for layer in problem.layers for o in layer.options}
    message = _solution_head_pb(solution, problem_id)
    message.assignment.extend(
        _assignment_pb(layer, key, options.get((layer, key)))
        for layer, key in solution.assignment.items()
    )
    return message
