"""`bitmesh run`: the whole pipeline (train FP32, sensitivity, solve, QAT or
search, baselines, ONNX) over the running mesh, with a progress bar per stage.

Rerunning with the same ``--out`` skips every stage already finished there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bitmesh.cli.common import add_client_args, console, dump_json, parse_shape
from bitmesh.cli.solver_cmds import add_budget_args, budgets_from
from bitmesh.client import Client
from bitmesh.errors import InvalidArgument
from bitmesh.pipeline.request import METHODS, PipelineRequest
from bitmesh.settings import SERVICES, load_settings


def request_from(args: argparse.Namespace) -> PipelineRequest:
    budgets_pb = budgets_from(args)
    budgets = {
        name: getattr(budgets_pb, name)
        for name in ("max_size_bytes", "max_bops", "max_latency_ms", "max_avg_weight_bits")
        if budgets_pb.HasField(name)
    }
    return PipelineRequest(
        model=args.model,
        dataset=args.dataset,
        budgets=budgets,
        latency_profile=args.latency_profile,
        method=args.method,
        options=tuple(o.strip() for o in args.formats.split(",") if o.strip()),
        input_shape=tuple(parse_shape(args.input_shape)),
        fp32_steps=args.fp32_steps,
        qat_steps=args.qat_steps,
        search_steps=args.search_steps,
        proxy_trials=args.proxy_trials,
        seed=args.seed,
        size_accounting="weights_only" if args.weights_only_size else "weights_and_scales",
    )


def addresses_from(items: list[str]) -> dict[str, str]:
    """``--address trainer=host:port`` (repeatable) over the mesh state / env."""
    addresses: dict[str, str] = {}
    for item in items:
        service, sep, address = item.partition("=")
        if not sep or service not in SERVICES or not address:
            raise InvalidArgument(
                f"--address {item!r}: use SERVICE=HOST:PORT with SERVICE in {', '.join(SERVICES)}"
            )
        addresses[service] = address
    return addresses


def cmd_run(args: argparse.Namespace) -> int:
    from bitmesh.pipeline.run import run_pipeline

    request = request_from(args)
    columns = (
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
    )
    client = Client(load_settings(), addresses=addresses_from(args.address), timeout=args.timeout)
    with client, Progress(*columns, console=console, disable=args.json) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, fraction: float, message: str) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=1.0, message="")
            bar.update(tasks[stage], completed=fraction, message=message)

        report = run_pipeline(client, request, args.out, progress)
    if args.json:
        dump_json(report)
        return 0
    console.print((Path(args.out) / "summary.md").read_text())
    cached = report.get("cached_stages") or []
    if cached:
        console.print(f"reused from {args.out}: {', '.join(cached)}")
    console.print(f"[bold]report:[/] {Path(args.out).resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("run", help="the whole pipeline: budgets in, quantized model out")
    parser.add_argument("--model", required=True, help="architecture, e.g. digits_cnn")
    parser.add_argument("--input-shape", default="", help="C,H,W (default 1,8,8 for digits_cnn)")
    parser.add_argument("--dataset", default="digits", help="digits, synthetic or folder:PATH")
    parser.add_argument("--method", choices=METHODS, default="lcpaq")
    parser.add_argument("--formats", default="int4,int8,e4m3", help="options per layer")
    parser.add_argument("--fp32-steps", type=int, default=300)
    parser.add_argument("--qat-steps", type=int, default=150)
    parser.add_argument("--search-steps", type=int, default=300)
    parser.add_argument(
        "--proxy-trials", type=int, default=3, help="LCPAQ's learning-rate search (0 = skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights-only-size",
        action="store_true",
        help="size and bits budgets count the element codes only (HAWQ-V3's convention); "
        "by default they count every scale, zero point and tensor scale too",
    )
    parser.add_argument(
        "--address",
        action="append",
        default=[],
        help="SERVICE=HOST:PORT, repeatable (default: the mesh `bitmesh up` started)",
    )
    parser.add_argument("--out", required=True, help="output folder (reruns resume from it)")
    add_budget_args(parser)
    add_client_args(parser)
    parser.set_defaults(func=cmd_run)
