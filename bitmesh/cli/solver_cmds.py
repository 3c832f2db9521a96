"""`bitmesh solve`, `bitmesh frontier`, `bitmesh whatif` over the solver service.

``--problem`` is a registered problem id (``p-...``) or a JSON file holding a
``bitmesh.v1.Problem`` in protobuf's JSON form; a file is registered first, so
later what-if queries can use the printed id.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from google.protobuf import json_format
from rich.table import Table

from bitmesh.cli.common import (
    add_client_args,
    client_from,
    console,
    dump_json,
    human_bytes,
    human_count,
)
from bitmesh.client import Client
from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.v1 import common_pb2, solver_pb2

_UNITS = {
    "": 1.0,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024.0,
    "mib": 1024.0**2,
    "gib": 1024.0**3,
    "b": 1.0,
    "ms": 1.0,
    "s": 1e3,
}
_AXES = {
    "size": common_pb2.COST_AXIS_SIZE,
    "bops": common_pb2.COST_AXIS_BOPS,
    "latency": common_pb2.COST_AXIS_LATENCY,
    "bits": common_pb2.COST_AXIS_AVG_WEIGHT_BITS,
}


def parse_quantity(text: str, what: str) -> float:
    """``6MB`` -> 6e6, ``70G`` -> 7e10, ``3ms`` -> 3.0, ``2.5`` -> 2.5."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InvalidArgument(
            f"{what} {text!r} is not a number with an optional unit (6MB, 70G, 3ms)"
        )
    return float(match.group(1)) * _UNITS[unit]


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", help="model size, e.g. 6MB")
    parser.add_argument("--max-bops", help="bit operations, e.g. 70G")
    parser.add_argument("--max-latency", help="latency in ms, e.g. 3ms")
    parser.add_argument("--max-bits", help="average weight bits, e.g. 5.5")
    parser.add_argument("--latency-profile", default="", help="e.g. nvidia-t4")


def budgets_from(args: argparse.Namespace) -> common_pb2.Budgets:
    budgets = common_pb2.Budgets(latency_profile=args.latency_profile)
    if args.max_size:
        budgets.max_size_bytes = parse_quantity(args.max_size, "--max-size")
    if args.max_bops:
        budgets.max_bops = parse_quantity(args.max_bops, "--max-bops")
    if args.max_latency:
        budgets.max_latency_ms = parse_quantity(args.max_latency, "--max-latency")
    if args.max_bits:
        budgets.max_avg_weight_bits = parse_quantity(args.max_bits, "--max-bits")
    return budgets


def problem_id_from(client: Client, problem: str) -> str:
    if problem.startswith("p-") and not Path(problem).exists():
        return problem
    path = Path(problem)
    if not path.is_file():
        raise NotFound(f"problem {problem!r} is neither a registered id (p-...) nor a file")
    try:
        message = json_format.ParseDict(json.loads(path.read_text()), solver_pb2.Problem())
    except (ValueError, json_format.ParseError) as exc:
        raise InvalidArgument(f"{path} is not a bitmesh.v1.Problem in JSON form: {exc}") from None
    reply = client.register_problem(message)
    console.print(f"registered {path.name} as [bold]{reply.problem_id}[/] ({reply.layers} layers)")
    return reply.problem_id


def print_solution(solution: solver_pb2.Solution) -> None:
    status = solver_pb2.SolveStatus.Name(solution.status).removeprefix("SOLVE_STATUS_").lower()
    table = Table(
        title=f"{status}, gap {solution.gap:.2g}, {solution.seconds * 1e3:.1f} ms "
        f"({solution.engine}, from {solution.answered_from})"
    )
    table.add_column("layer")
    table.add_column("option")
    for item in solution.assignment:
        table.add_row(item.layer, item.option_key)
    console.print(table)
    totals = solution.totals
    counted = "weights only" if _weights_only(solution) else "weights and scales"
    console.print(
        f"total Omega {solution.total_omega:.6g}; size {human_bytes(budgeted_size(solution))} "
        f"({human_bytes(totals.size_bytes)} codes + {human_bytes(totals.scale_bytes)} scales; "
        f"the budget counts {counted}); BOPs {human_count(totals.bops)}; latency "
        f"{totals.latency_ms:.3g} ms; avg weight bits {solution.avg_weight_bits:.3g}"
    )


def _weights_only(solution: solver_pb2.Solution) -> bool:
    return solution.size_accounting == common_pb2.SIZE_ACCOUNTING_WEIGHTS_ONLY


def budgeted_size(solution: solver_pb2.Solution) -> float:
    """The size the budget compared: codes plus scales, or codes only."""
    totals = solution.totals
    return totals.size_bytes + (0.0 if _weights_only(solution) else totals.scale_bytes)


def cmd_solve(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        pid = problem_id_from(client, args.problem)
        solution = client.solve(solver_pb2.SolveRequest(problem_id=pid, budgets=budgets_from(args)))
    if args.json:
        dump_json(solution)
    else:
        print_solution(solution)
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        pid = problem_id_from(client, args.problem)
        solution = client.what_if(pid, budgets_from(args))
    if args.json:
        dump_json(solution)
    else:
        print_solution(solution)
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    axis = _AXES[args.axis]
    with client_from(args) as client:
        pid = problem_id_from(client, args.problem)
        reply = client.frontier(
            solver_pb2.FrontierRequest(
                problem_id=pid, axis=axis, constraints=budgets_from(args), points=args.points
            )
        )
    if args.plot:
        plot_frontier(reply, args.axis, args.plot)
        console.print(f"plot written to {args.plot}")
    if args.json:
        dump_json(reply)
        return 0
    table = Table(
        title=f"Pareto frontier: Omega vs {args.axis} ({len(reply.points)} points, {reply.seconds:.2f} s)"
    )
    for column in ("#", "size", "BOPs", "latency ms", "avg bits", "total Omega"):
        table.add_column(column, justify="right")
    for i, p in enumerate(reply.points):
        table.add_row(
            str(i),
            human_bytes(budgeted_size(p)),
            human_count(p.totals.bops),
            f"{p.totals.latency_ms:.3g}",
            f"{p.avg_weight_bits:.3g}",
            f"{p.total_omega:.6g}",
        )
    console.print(table)
    return 0


def axis_values(reply: solver_pb2.FrontierResponse, axis: str) -> list[float]:
    pick = {
        "size": lambda p: budgeted_size(p) / 1e6,
        "bops": lambda p: p.totals.bops / 1e9,
        "latency": lambda p: p.totals.latency_ms,
        "bits": lambda p: p.avg_weight_bits,
    }[axis]
    return [pick(p) for p in reply.points]


def plot_frontier(reply: solver_pb2.FrontierResponse, axis: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "size": "model size (MB)",
        "bops": "GBOPs",
        "latency": "latency (ms)",
        "bits": "average weight bits",
    }
    xs = axis_values(reply, axis)
    ys = [p.total_omega for p in reply.points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.step(xs, ys, where="post", color="tab:blue", alpha=0.4)
    ax.plot(xs, ys, "o", color="tab:blue", label="Pareto-optimal configurations")
    ax.set_xlabel(labels[axis])
    ax.set_ylabel("total perturbation Ω (lower is better)")
    ax.set_title(f"Ω vs {labels[axis]}: {len(xs)} Pareto points")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, func, text in (
        ("solve", cmd_solve, "best configuration under budgets"),
        ("whatif", cmd_whatif, "a budget against a registered problem"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument(
            "--problem", required=True, help="problem id (p-...) or Problem JSON file"
        )
        add_budget_args(parser)
        add_client_args(parser)
        parser.set_defaults(func=func)
    parser = sub.add_parser("frontier", help="Pareto frontier of Omega against a cost axis")
    parser.add_argument("--problem", required=True, help="problem id (p-...) or Problem JSON file")
    parser.add_argument("--axis", choices=sorted(_AXES), default="bops")
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--plot", default="", help="write a PNG plot here")
    add_budget_args(parser)
    add_client_args(parser)
    parser.set_defaults(func=cmd_frontier)
