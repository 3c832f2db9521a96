"""`bitmesh train`, `bitmesh search`, `bitmesh calibrate`, `bitmesh training ...`.

Each start command sends one request to the trainer service and, unless
``--detach``, follows the job live (step, loss, accuracy, policy entropy,
sampled cost) until it ends, then prints its evaluation and configuration.
Torch-free: configurations are parsed with :mod:`bitmesh.formats` and sent as
protos; the service checks them against the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bitmesh.cli.common import (
    add_client_args,
    add_data_args,
    add_model_args,
    client_from,
    console,
    dataset_ref_from,
    dump_json,
    emit_job_result,
    human_bytes,
    human_count,
    model_ref_from,
)
from bitmesh.client import Client
from bitmesh.errors import InvalidArgument
from bitmesh.formats import get_format, parse_option
from bitmesh.rpc.convert import option_to_pb
from bitmesh.v1 import common_pb2, trainer_pb2

_TERMINAL = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}
_SCHEDULES = {
    "cosine": trainer_pb2.LR_SCHEDULE_COSINE,
    "constant": trainer_pb2.LR_SCHEDULE_CONSTANT,
    "step": trainer_pb2.LR_SCHEDULE_STEP,
}
_ESTIMATORS = {
    "minmax": trainer_pb2.RANGE_ESTIMATOR_MINMAX,
    "ema": trainer_pb2.RANGE_ESTIMATOR_EMA,
    "percentile": trainer_pb2.RANGE_ESTIMATOR_PERCENTILE,
}


# -- request building -----------------------------------------------------------


def parse_config(text: str) -> common_pb2.QuantConfig:
    """``layer=option,...`` (options as ``int4``, ``int4/uint8``, ``e4m3:pt``), or
    ``@file.json`` holding ``{"layer": "option", ...}`` (e.g. a solver's result)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise InvalidArgument(f"configuration file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"configuration file {str(path)!r} is not JSON: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]
        if not isinstance(data, dict):
            raise InvalidArgument(f"{str(path)!r} must hold an object of layer -> option")
        pairs = [(str(k), str(v)) for k, v in data.items()]
    else:
        pairs = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            layer, sep, option = item.partition("=")
            if not sep or not layer.strip() or not option.strip():
                raise InvalidArgument(
                    f"configuration item {item!r} must be layer=option, e.g. conv1=int8"
                )
            pairs.append((layer.strip(), option.strip()))
    return common_pb2.QuantConfig(
        layers=[
            common_pb2.LayerConfig(layer=layer, option=option_to_pb(parse_option(option)))
            for layer, option in pairs
        ]
    )


def training_from(args: argparse.Namespace) -> trainer_pb2.TrainingSettings:
    return trainer_pb2.TrainingSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        schedule=_SCHEDULES[args.schedule],
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        data_fraction=args.data_fraction,
        eval_every=args.eval_every,
    )


def _granularity(per_tensor: bool) -> common_pb2.Granularity:
    return common_pb2.GRANULARITY_PER_TENSOR if per_tensor else common_pb2.GRANULARITY_UNSPECIFIED


def _base_request(args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    return trainer_pb2.StartTrainingRequest(
        model=model_ref_from(args),
        dataset=dataset_ref_from(args),
        training=training_from(args),
        request_id=args.request_id,
    )


def _fixed_config(args: argparse.Namespace) -> tuple[common_pb2.QuantConfig, Any]:
    config = parse_config(args.config) if args.config else common_pb2.QuantConfig()
    uniform = option_to_pb(parse_option(args.uniform)) if args.uniform else None
    return config, uniform


def qat_request(args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    request = _base_request(args)
    config, uniform = _fixed_config(args)
    spec = trainer_pb2.QatSpec(
        config=config,
        distillation=trainer_pb2.Distillation(
            enabled=args.distill, alpha=args.alpha, temperature=args.temperature
        ),
        fold_bn=args.fold_bn,
        weight_granularity=_granularity(args.per_tensor),
        activation_range=_ESTIMATORS[args.range],
        range_momentum=args.range_momentum,
        range_percentile=args.range_percentile,
    )
    if uniform is not None:
        spec.default_option.CopyFrom(uniform)
    request.qat.CopyFrom(spec)
    return request


def calibration_request(args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    request = _base_request(args)
    config, uniform = _fixed_config(args)
    spec = trainer_pb2.CalibrationSpec(
        config=config,
        calibration_batches=args.batches,
        activation_range=_ESTIMATORS[args.range],
        weight_granularity=_granularity(args.per_tensor),
    )
    if uniform is not None:
        spec.default_option.CopyFrom(uniform)
    request.calibration.CopyFrom(spec)
    return request


def search_request(args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    request = _base_request(args)
    formats = [get_format(name.strip()) for name in args.formats.split(",") if name.strip()]
    targets = [t is not None for t in (args.target_bops, args.target_size, args.target)]
    if sum(targets) != 1:
        raise InvalidArgument("give exactly one of --target-bops, --target-size or --target")
    spec = trainer_pb2.SearchSpec(
        formats=[common_pb2.NumericFormat(name=f.name) for f in formats],
        separate_activation=args.separate_activation,
        target_axis=common_pb2.COST_AXIS_SIZE
        if args.target_size is not None or args.axis == "size"
        else common_pb2.COST_AXIS_BOPS,
        cost_target=args.target_bops or args.target_size or 0.0,
        cost_beta=args.cost_beta,
        one_sided=args.one_sided,
        entropy_beta_max=args.entropy_beta,
        warmup_fraction=args.warmup,
        baseline_momentum=args.baseline_momentum,
        switchable_clipping=not args.shared_clipping,
        tie_groups=args.tie,
        policy_learning_rate=args.policy_lr,
        weight_granularity=_granularity(args.per_tensor),
        reward_holdout_fraction=args.reward_holdout,
        plain_baseline=args.plain_baseline,
        learned_clips=args.learned_clips,
    )
    if args.target is not None:
        spec.target_option.CopyFrom(option_to_pb(parse_option(args.target)))
    request.search.CopyFrom(spec)
    return request


# -- following a job --------------------------------------------------------------


def _metrics_text(point: trainer_pb2.MetricPoint, search: bool) -> str:
    text = f"loss {point.loss:.4f}  acc {point.accuracy:.3f}"
    if search:
        text += f"  H {point.entropy:.3f}  cost {human_count(point.sampled_cost)}"
    if point.HasField("eval_accuracy"):
        text += f"  held-out {point.eval_accuracy:.3f}"
    return text


def follow(client: Client, job_id: str, search: bool) -> trainer_pb2.TrainingResult:
    """Show live progress until the job ends; return its result."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(job_id, total=None, metrics="queued")
            for event in client.watch_training(job_id):
                status = event.status
                fields: dict[str, Any] = {"description": f"{job_id} {status.stage or ''}".strip()}
                if event.total_steps:
                    fields["total"] = event.total_steps
                if event.HasField("latest"):
                    fields["completed"] = event.latest.step
                    fields["metrics"] = _metrics_text(event.latest, search)
                elif status.message:
                    fields["metrics"] = status.message
                progress.update(task, **fields)
                if status.state in _TERMINAL:
                    break
    except KeyboardInterrupt:
        console.print(
            f"stopped watching; the job goes on (bitmesh training cancel {job_id} stops it)"
        )
        raise
    return client.get_training(job_id)


def print_result(result: trainer_pb2.TrainingResult) -> None:
    status = result.status
    state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_")
    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(state, "white")
    console.print(
        f"[bold]{status.job_id}[/] ({status.kind}): [{colour}]{state}[/] {status.message}"
    )
    if status.error:
        console.print(f"[red]error:[/] {status.error}")
    if status.state != common_pb2.JOB_STATE_SUCCEEDED:
        return
    ev = result.evaluation
    line = (
        f"held-out accuracy {ev.accuracy:.4f} (loss {ev.loss:.4f}, {ev.samples} samples)  "
        f"BOPs {human_count(ev.costs.bops)}  size {human_bytes(ev.costs.size_bytes)}"
    )
    if status.kind == "search":
        line += f"  policy entropy {result.final_entropy:.4f} nats/decision"
        line += f"  target {human_count(result.cost_target)}"
    console.print(line)
    if result.resumed_from:
        console.print(f"resumed after a worker loss at step(s) {list(result.resumed_from)}")
    table = Table(title="configuration")
    table.add_column("layer")
    table.add_column("weight")
    table.add_column("activation")
    table.add_column("granularity")
    for item in result.config.layers:
        option = item.option
        table.add_row(
            item.layer,
            option.weight.name,
            option.activation.name,
            common_pb2.Granularity.Name(option.granularity).removeprefix("GRANULARITY_").lower(),
        )
    console.print(table)
    console.print(f"weights: {result.weights.uri}")


def _start(
    args: argparse.Namespace, request: trainer_pb2.StartTrainingRequest, search: bool
) -> int:
    with client_from(args) as client:
        ref = client.start_training(request)
        if args.detach:
            if args.json:
                dump_json(ref)
            else:
                console.print(f"started {ref.job_id} (bitmesh training watch {ref.job_id})")
            return 0
        result = follow(client, ref.job_id, search) if not args.json else None
        if result is None:
            for event in client.watch_training(ref.job_id):
                if event.status.state in _TERMINAL:
                    break
            result = client.get_training(ref.job_id)
    return emit_job_result(args, result, print_result)


def cmd_train(args: argparse.Namespace) -> int:
    return _start(args, qat_request(args), search=False)


def cmd_calibrate(args: argparse.Namespace) -> int:
    return _start(args, calibration_request(args), search=False)


def cmd_search(args: argparse.Namespace) -> int:
    return _start(args, search_request(args), search=True)


def cmd_get(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        result = client.get_training(args.job_id)
    if args.json:
        dump_json(result)
    else:
        print_result(result)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        result = follow(client, args.job_id, search=args.job_id.startswith("search"))
    print_result(result)
    return 0 if result.status.state == common_pb2.JOB_STATE_SUCCEEDED else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        status = client.cancel_training(args.job_id)
    if args.json:
        dump_json(status)
    else:
        state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_")
        console.print(f"{status.job_id}: {state} {status.message}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        reply = client.list_training(args.limit)
    if args.json:
        dump_json(reply)
        return 0
    table = Table(title="training jobs")
    for column in ("job", "kind", "state", "progress", "message"):
        table.add_column(column)
    for job in reply.jobs:
        table.add_row(
            job.job_id,
            job.kind,
            common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
            f"{job.progress:.0%}",
            job.error or job.message,
        )
    console.print(table)
    return 0


# -- flags --------------------------------------------------------------------------


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training loop (0 = service default)")
    group.add_argument("--steps", type=int, default=0, help="optimiser steps (default 300)")
    group.add_argument("--batch-size", type=int, default=0, help="default 64")
    group.add_argument("--lr", type=float, default=0.0, help="SGD learning rate (default 0.02)")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--schedule", choices=sorted(_SCHEDULES), default="cosine")
    group.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--data-fraction", type=float, default=0.0, help="fraction of the train split"
    )
    group.add_argument(
        "--eval-every", type=int, default=0, help="held-out evaluation every N steps"
    )


def _add_job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detach", action="store_true", help="print the job id and return")
    parser.add_argument("--request-id", default="", help="idempotency key: same key, same job")
    add_client_args(parser)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="", help="layer=option,... or @file.json (layers not named: --uniform)"
    )
    parser.add_argument("--uniform", default="", help="option for every other layer, e.g. int4")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales")
    parser.add_argument(
        "--range", choices=sorted(_ESTIMATORS), default="minmax", help="activation range estimator"
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train", help="quantization-aware training at a configuration")
    add_model_args(train)
    add_data_args(train)
    _add_config_args(train)
    train.add_argument("--distill", action="store_true", help="distil from the FP32 model")
    train.add_argument("--alpha", type=float, default=0.0, help="distillation weight (0.95)")
    train.add_argument("--temperature", type=float, default=0.0, help="distillation T (6)")
    train.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs")
    train.add_argument("--range-momentum", type=float, default=0.0)
    train.add_argument("--range-percentile", type=float, default=0.0)
    _add_training_args(train)
    _add_job_args(train)
    train.set_defaults(func=cmd_train)

    calibrate = sub.add_parser("calibrate", help="post-training calibration (no training)")
    add_model_args(calibrate)
    add_data_args(calibrate)
    _add_config_args(calibrate)
    calibrate.add_argument("--batches", type=int, default=0, help="calibration batches (8)")
    _add_training_args(calibrate)
    _add_job_args(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    search = sub.add_parser("search", help="FLIQS one-shot mixed int/fp format search")
    add_model_args(search)
    add_data_args(search)
    search.add_argument(
        "--formats",
        default="int4,int8,e2m1,e4m3",
        help="search space, e.g. int2,int4,int8,e2m1,e3m2,e2m3,e4m3,e5m2,bf16",
    )
    search.add_argument(
        "--separate-activation",
        action="store_true",
        help="search weight and activation formats apart",
    )
    search.add_argument(
        "--target", default=None, help="target = cost of every layer at this option"
    )
    search.add_argument("--target-bops", type=float, default=None)
    search.add_argument("--target-size", type=float, default=None, help="bytes of weights")
    search.add_argument("--axis", choices=("bops", "size"), default="bops", help="for --target")
    search.add_argument("--cost-beta", type=float, default=0.0, help="cost weight (2.0)")
    search.add_argument("--one-sided", action="store_true", help="penalise only costs above target")
    search.add_argument("--entropy-beta", type=float, default=0.0, help="max entropy weight (2.0)")
    search.add_argument("--warmup", type=float, default=0.0, help="warm-up fraction (0.25)")
    search.add_argument("--baseline-momentum", type=float, default=0.0, help="(0.9)")
    search.add_argument("--policy-lr", type=float, default=0.0, help="policy Adam rate (0.05)")
    search.add_argument(
        "--shared-clipping",
        action="store_true",
        help="one clip for all formats (no switchable clipping)",
    )
    search.add_argument("--tie", action="append", default=[], help="layers a,b share a decision")
    search.add_argument(
        "--reward-holdout",
        type=float,
        default=0.0,
        help="fraction of the train split held out for the policy's quality "
        "(one extra forward pass per step; 0 = the training batch)",
    )
    search.add_argument(
        "--learned-clips",
        action="store_true",
        help="learn each format's activation clip (LSQ) instead of a running range",
    )
    search.add_argument(
        "--plain-baseline",
        action="store_true",
        help="the published single moving-average baseline (no exact cost term)",
    )
    search.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales")
    _add_training_args(search)
    _add_job_args(search)
    search.set_defaults(func=cmd_search)

    jobs = sub.add_parser("training", help="get, watch, cancel or list training jobs")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    for name, func, doc in (
        ("get", cmd_get, "a job's status and result"),
        ("watch", cmd_watch, "follow a job live"),
        ("cancel", cmd_cancel, "stop a job"),
    ):
        verb = verbs.add_parser(name, help=doc)
        verb.add_argument("job_id")
        add_client_args(verb)
        verb.set_defaults(func=func)
    listing = verbs.add_parser("list", help="recent jobs")
    listing.add_argument("--limit", type=int, default=50)
    add_client_args(listing)
    listing.set_defaults(func=cmd_list)
