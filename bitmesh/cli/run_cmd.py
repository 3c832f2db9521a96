"""`bitmesh run`: the whole pipeline (FP32 model, sensitivity, solve, QAT or
search, uniform baselines, ONNX) over the running mesh, with a progress bar
per stage.

The FP32 model is the user's (``--weights``, or a ``.pt2`` program, which
carries its own: evaluated, not trained, and the distillation teacher) or
trained from scratch (``--fp32-steps``). Rerunning with the same ``--out``
skips every stage already finished there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bitmesh.cli.common import (
    add_client_args,
    add_normalize_arg,
    console,
    dump_json,
    parse_shape,
)
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
        weights=args.weights,
        num_classes=args.num_classes,
        data_shape=tuple(parse_shape(args.data_shape)),
        data_classes=args.data_classes,
        normalize=args.normalize,
        calibration_subset=args.calibration_subset,
        sensitivity_subset=args.sensitivity_subset,
        eval_subset=args.eval_subset,
        sensitivity_samples=args.sensitivity_samples,
        frontier_points=args.frontier_points,
        learning_rate=args.learning_rate,
        qat_learning_rate=args.qat_learning_rate,
        proxy_steps=args.proxy_steps,
        proxy_learning_rates=_rates(args.proxy_learning_rates),
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


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise InvalidArgument(
            f"--proxy-learning-rates {text!r} must be numbers like 0.002,0.01"
        ) from None


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
    defaults = PipelineRequest(model="-", budgets={"max_bops": 1.0})
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        help="a torchvision classification name (resnet18), digits_cnn, or a .pt2 file "
        "(torch.export.save, with a dynamic batch dimension)",
    )
    model.add_argument(
        "--weights",
        default="",
        help="state_dict file of the model (torch.save(model.state_dict()); read with "
        "weights_only=True): evaluated, not trained, and the distillation teacher",
    )
    model.add_argument(
        "--input-shape",
        default="",
        help="C,H,W (default: a .pt2's example input, else --data-shape, 1,8,8 for digits, "
        "else 3,224,224)",
    )
    model.add_argument(
        "--num-classes", type=int, default=0, help="0 = the data's (folder: its class folders)"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", help="digits, synthetic or folder:PATH")
    data.add_argument(
        "--data-shape", default="", help="C,H,W samples are resized to (default: the model's)"
    )
    data.add_argument("--data-classes", type=int, default=0, help="synthetic data's classes")
    add_normalize_arg(data)
    data.add_argument(
        "--calibration-subset",
        type=int,
        default=0,
        help="training samples QAT, the search and the proxy trials calibrate and train on "
        "(0 = the whole train split)",
    )
    data.add_argument(
        "--sensitivity-subset",
        type=int,
        default=0,
        help="training samples the Hessian traces are drawn from (0 = all)",
    )
    data.add_argument(
        "--eval-subset",
        type=int,
        default=0,
        help="test samples every evaluation and the ONNX check use (0 = the whole test split)",
    )
    parser.add_argument("--method", choices=METHODS, default="lcpaq")
    parser.add_argument("--formats", default="int4,int8,e4m3", help="options per layer")
    steps = parser.add_argument_group("training")
    steps.add_argument(
        "--fp32-steps",
        type=int,
        default=defaults.fp32_steps,
        help="steps of FP32 training from scratch (unused with --weights or a .pt2)",
    )
    steps.add_argument("--qat-steps", type=int, default=defaults.qat_steps)
    steps.add_argument("--search-steps", type=int, default=defaults.search_steps)
    steps.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="FP32")
    steps.add_argument("--qat-learning-rate", type=float, default=defaults.qat_learning_rate)
    steps.add_argument(
        "--proxy-trials",
        type=int,
        default=defaults.proxy_trials,
        help="LCPAQ's learning-rate search (0 = skip)",
    )
    steps.add_argument("--proxy-steps", type=int, default=defaults.proxy_steps)
    steps.add_argument(
        "--proxy-learning-rates",
        default=",".join(f"{r:g}" for r in defaults.proxy_learning_rates),
        help="the QAT learning rates the proxy search picks from",
    )
    steps.add_argument(
        "--sensitivity-samples",
        type=int,
        default=defaults.sensitivity_samples,
        help="Hutchinson probes per layer, at most",
    )
    steps.add_argument("--frontier-points", type=int, default=defaults.frontier_points)
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
