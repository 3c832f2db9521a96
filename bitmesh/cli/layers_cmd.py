"""`bitmesh layers`: a model's quantizable layers and costs, via the sensitivity service."""

from __future__ import annotations

import argparse

from rich.table import Table

from bitmesh.cli.common import (
    add_client_args,
    add_model_args,
    client_from,
    console,
    dump_json,
    human_bytes,
    human_count,
    model_ref_from,
)
from bitmesh.formats import parse_options
from bitmesh.rpc.convert import option_to_pb
from bitmesh.v1 import sensitivity_pb2


def cmd_layers(args: argparse.Namespace) -> int:
    options = parse_options(args.options) if args.options else []
    request = sensitivity_pb2.ListLayersRequest(
        model=model_ref_from(args), options=[option_to_pb(o) for o in options]
    )
    with client_from(args) as client:
        reply = client.list_layers(request)
    if args.json:
        dump_json(reply)
        return 0
    table = Table(title=f"{args.model}: {len(reply.layers)} quantizable layers")
    table.add_column("layer")
    table.add_column("kind")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for option in options:
        table.add_column(f"{option.key}\nsize / BOPs", justify="right")
    for entry in reply.layers:
        row = [
            entry.layer.name,
            entry.layer.kind,
            human_count(entry.layer.parameters),
            human_count(entry.layer.macs),
        ]
        row += [
            f"{human_bytes(o.costs.size_bytes)} / {human_count(o.costs.bops)}"
            for o in entry.options
        ]
        table.add_row(*row)
    console.print(table)
    console.print(
        f"total parameters {human_count(reply.total_parameters)} ({reply.total_parameters:,}), "
        f"MACs {human_count(reply.total_macs)}, model hash {reply.model_hash[:12]}, "
        f"layers cover {reply.weight_coverage:.1%} of "
        f"{human_count(reply.weight_parameters)} weight parameters"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("layers", help="list a model's quantizable layers and costs")
    add_model_args(parser)
    parser.add_argument("--options", default="", help="options to cost, e.g. int4,int8,e4m3")
    add_client_args(parser)
    parser.set_defaults(func=cmd_layers)
