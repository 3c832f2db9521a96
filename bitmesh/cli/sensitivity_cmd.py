"""`bitmesh sensitivity`: per-layer Hessian traces and the Omega table, live."""

from __future__ import annotations

import argparse

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bitmesh.cli.common import (
    add_client_args,
    add_data_args,
    add_model_args,
    client_from,
    console,
    dataset_ref_from,
    dump_json,
    model_ref_from,
)
from bitmesh.errors import FailedPrecondition
from bitmesh.formats import parse_options
from bitmesh.rpc.convert import option_to_pb
from bitmesh.v1 import common_pb2, sensitivity_pb2


def cmd_sensitivity(args: argparse.Namespace) -> int:
    options = parse_options(args.formats)
    dataset = dataset_ref_from(args)
    dataset.batch_size = args.batch_size
    request = sensitivity_pb2.StartAnalysisRequest(
        model=model_ref_from(args),
        dataset=dataset,
        options=[option_to_pb(o) for o in options],
        settings=sensitivity_pb2.EstimatorSettings(
            target_relative_se=args.target_rse,
            max_samples=args.max_samples,
            seed=args.seed,
            num_batches=args.batches,
        ),
        activation_sensitivity=args.activations,
    )
    with client_from(args) as client:
        job = client.start_analysis(request)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            disable=args.json,
            transient=True,
        ) as bar:
            task = bar.add_task("sensitivity", total=1.0)
            for event in client.watch_analysis(job.job_id):
                worst = max(
                    (e.standard_error / abs(e.trace) for e in event.layers if e.trace), default=0.0
                )
                bar.update(
                    task,
                    completed=event.status.progress,
                    description=f"{event.status.stage or 'queued'} (worst rel. SE {worst:.1%})",
                )
        result = client.get_analysis(job.job_id)
    if result.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"analysis {job.job_id} ended {common_pb2.JobState.Name(result.status.state)}: "
            f"{result.status.error or result.status.message}"
        )
    if args.json:
        dump_json(result.report)
        return 0
    report = result.report
    table = Table(
        title=f"{args.model}: per-layer sensitivity ({'cached, ' if report.cached else ''}"
        f"{report.seconds:.1f} s)"
    )
    for column in ("layer", "params", "trace ± SE", "samples"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    for option in options:
        table.add_column(f"Ω {option.key}", justify="right")
    for layer in report.layers:
        row = [
            layer.layer.name,
            f"{layer.layer.parameters:,}",
            f"{layer.trace:.4g} ± {layer.standard_error:.2g}",
            str(layer.samples),
        ]
        row += [f"{p.omega:.3g}" for p in layer.perturbations]
        table.add_row(*row)
    console.print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("sensitivity", help="per-layer Hessian traces and perturbation table")
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument(
        "--formats", default="int4,int8,e4m3", help="options to price, e.g. int4,int8,e4m3"
    )
    parser.add_argument(
        "--batches", type=int, default=1, help="batches of the data to average over"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="0 = 32")
    parser.add_argument(
        "--target-rse", type=float, default=0.05, help="target relative standard error"
    )
    parser.add_argument("--max-samples", type=int, default=200, help="per layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activations", action="store_true", help="activation sensitivity too")
    add_client_args(parser)
    parser.set_defaults(func=cmd_sensitivity)
