"""proto <-> domain conversion for the solver (the only place that sees protos)."""

from __future__ import annotations

from typing import Any

from bitmesh.errors import InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.rpc.convert import option_from_pb, option_to_pb
from bitmesh.v1 import common_pb2, solver_pb2
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


def problem_from_pb(msg: solver_pb2.Problem) -> Problem:
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


def solution_to_pb(
    solution: Solution, problem: Problem, problem_id: str = ""
) -> solver_pb2.Solution:
    options = {(layer.name, o.key): o for layer in problem.layers for o in layer.options}
    assignment = []
    for layer, key in solution.assignment.items():
        cost = options.get((layer, key))
        given = None
        if cost is not None and cost.weight_format:
            try:
                given = option_to_pb(parse_option(f"{cost.weight_format}/{cost.act_format}"))
                if cost.granularity == "per_tensor":
                    given.granularity = common_pb2.GRANULARITY_PER_TENSOR
            except InvalidArgument:
                given = None
        assignment.append(
            solver_pb2.Assignment(
                layer=layer, option_key=key, option=_option_pb_for_key(key, given)
            )
        )
    return solver_pb2.Solution(
        status=STATUS_TO_PB[solution.status],
        gap=solution.gap,
        assignment=assignment,
        total_omega=solution.total_omega,
        totals=common_pb2.LayerCosts(
            size_bytes=solution.totals.size_bytes,
            bops=solution.totals.bops,
            latency_ms=solution.totals.latency_ms,
            scale_bytes=solution.totals.scale_bytes,
        ),
        avg_weight_bits=solution.avg_weight_bits,
        seconds=solution.seconds,
        engine=solution.engine,
        answered_from=solution.answered_from,
        problem_id=problem_id,
    )
