"""`bitmesh tune`: a proxy search of quantization hyperparameters, with a live
table of its trials; `bitmesh tuning get|watch|cancel|list` for searches.

Knobs: ``--knob learning_rate=0.002,0.02,0.2`` (categorical),
``--knob weight_decay=1e-5:1e-2:log`` (a float range, optionally log),
``--knob NAME=1..4`` (an integer range). Fidelity: ``--rung 0.25:8 --rung
0.5:16`` (data fraction : steps, increasing).
"""

from __future__ import annotations

import argparse

from rich.live import Live
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
)
from bitmesh.cli.common import model_ref_from as _model_ref_from
from bitmesh.cli.solver_cmds import add_budget_args, budgets_from
from bitmesh.cli.train_cmds import parse_config
from bitmesh.client import Client
from bitmesh.errors import InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.rpc.convert import option_to_pb
from bitmesh.v1 import common_pb2, proxy_nas_pb2

_TERMINAL = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)


def parse_knob(text: str) -> proxy_nas_pb2.Hyperparameter:
    """``name=a,b,c``, ``name=low:high[:log]`` or ``name=low..high``."""
    name, sep, domain = text.partition("=")
    name, domain = name.strip(), domain.strip()
    if not sep or not name or not domain:
        raise InvalidArgument(f"knob {text!r} must be name=a,b,c or name=low:high[:log]")
    if ".." in domain:
        low, _, high = domain.partition("..")
        try:
            return proxy_nas_pb2.Hyperparameter(
                name=name, int_range=proxy_nas_pb2.IntRange(low=int(low), high=int(high))
            )
        except ValueError:
            raise InvalidArgument(f"knob {text!r}: an integer range is low..high") from None
    if ":" in domain:
        parts = domain.split(":")
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise InvalidArgument(f"knob {text!r}: a float range is low:high or low:high:log")
        try:
            ends = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise InvalidArgument(f"knob {text!r}: the range ends must be numbers") from None
        return proxy_nas_pb2.Hyperparameter(
            name=name, float_range=proxy_nas_pb2.FloatRange(low=ends[0], high=ends[1], log=log)
        )
    choices = [c.strip() for c in domain.split(",") if c.strip()]
    return proxy_nas_pb2.Hyperparameter(
        name=name, categorical=proxy_nas_pb2.Categorical(choices=choices)
    )


def parse_rung(text: str) -> proxy_nas_pb2.Rung:
    fraction, _, steps = text.partition(":")
    try:
        return proxy_nas_pb2.Rung(data_fraction=float(fraction), steps=int(steps))
    except ValueError:
        raise InvalidArgument(f"rung {text!r} must be data_fraction:steps, e.g. 0.25:8") from None


def search_request(args: argparse.Namespace) -> proxy_nas_pb2.StartSearchRequest:
    request = proxy_nas_pb2.StartSearchRequest(
        model=_model_ref_from(args),
        dataset=dataset_ref_from(args),
        space=[parse_knob(k) for k in args.knob],
        trials=args.trials,
        fidelity=[parse_rung(r) for r in args.rung],
        full_fidelity_checks=args.checks,
        seed=args.seed,
        request_id=args.request_id,
        reduction_factor=args.eta,
        sampler=args.sampler,
        parallel_trials=args.parallel,
        batch_size=args.batch_size,
        candidates=[option_to_pb(parse_option(c)) for c in args.candidates.split(",") if c],
    )
    if args.full:
        request.full_fidelity.CopyFrom(parse_rung(args.full))
    budgets = budgets_from(args)
    has_budget = any(
        budgets.HasField(f)
        for f in ("max_size_bytes", "max_bops", "max_latency_ms", "max_avg_weight_bits")
    )
    if args.config:
        request.config.CopyFrom(parse_config(args.config))
    elif has_budget:
        request.budgets.CopyFrom(budgets)
    if args.uniform:
        request.default_option.CopyFrom(option_to_pb(parse_option(args.uniform)))
    return request


_STATES = {
    proxy_nas_pb2.TRIAL_STATE_RUNNING: "[cyan]running",
    proxy_nas_pb2.TRIAL_STATE_PROMOTED: "[green]promoted",
    proxy_nas_pb2.TRIAL_STATE_PRUNED: "[dim]pruned",
    proxy_nas_pb2.TRIAL_STATE_COMPLETE: "[bold green]complete",
    proxy_nas_pb2.TRIAL_STATE_FAILED: "[red]failed",
}


def trials_table(
    title: str, trials: dict[int, proxy_nas_pb2.TrialRecord], best: int | None
) -> Table:
    table = Table(title=title)
    for column in ("#", "params", "rung", "score", "state", "steps", "reason"):
        table.add_column(
            column, justify="right" if column in ("#", "rung", "score", "steps") else "left"
        )
    for number in sorted(trials):
        t = trials[number]
        params = ", ".join(f"{k}={v}" for k, v in sorted(t.params.items()))
        mark = " *" if number == best else ""
        table.add_row(
            f"{number}{mark}",
            params,
            str(t.rung),
            f"{t.score:.4f}" if t.rung_scores else "-",
            _STATES.get(t.state, "?"),
            str(t.training_steps),
            t.reason[:60],
        )
    return table


def follow(client: Client, job_id: str) -> proxy_nas_pb2.SearchResult:
    """A live table of the trials until the search ends; then its result."""
    trials: dict[int, proxy_nas_pb2.TrialRecord] = {}
    best: int | None = None
    try:
        with Live(
            trials_table(job_id, trials, best), console=console, refresh_per_second=4
        ) as live:
            for event in client.watch_tuning(job_id):
                if event.HasField("trial"):
                    trials[event.trial.number] = event.trial
                if event.HasField("best"):
                    best = event.best.number
                status = event.status
                title = (
                    f"{job_id}: {status.stage or 'queued'} {status.progress:.0%} {status.message}"
                )
                live.update(trials_table(title, trials, best))
                if status.state in _TERMINAL:
                    break
    except KeyboardInterrupt:
        console.print(f"stopped watching; the search goes on (bitmesh tuning cancel {job_id})")
        raise
    return client.get_tuning(job_id)


def print_result(result: proxy_nas_pb2.SearchResult) -> None:
    status = result.status
    state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_")
    console.print(f"[bold]{status.job_id}[/]: {state} {status.message}")
    if status.error:
        console.print(f"[red]{status.error}[/]")
    trials = {t.number: t for t in result.trials}
    console.print(trials_table("trials", trials, result.best_trial))
    if result.best_params:
        params = ", ".join(f"{k}={v}" for k, v in sorted(result.best_params.items()))
        console.print(f"best: trial {result.best_trial} ({params}) score {result.best_score:.4f}")
    q = result.quality
    if q.full_search_steps:
        tau = f"{q.kendall_tau:.3f}" if q.full_fidelity_trials >= 2 else "n/a"
        console.print(
            f"proxy: {q.search_steps} training steps vs {q.full_search_steps} for a full search "
            f"(ratio {q.compute_ratio:.3f}); Kendall tau {tau} over {q.full_fidelity_trials} "
            f"full-fidelity checks ({q.check_steps} steps)"
        )


def cmd_tune(args: argparse.Namespace) -> int:
    request = search_request(args)
    with client_from(args) as client:
        job_id = client.start_tuning(request).job_id
        if args.detach:
            print(job_id)
            return 0
        result = client.get_tuning(job_id) if args.json else follow(client, job_id)
        if args.json:
            for _ in client.watch_tuning(job_id):
                pass
            result = client.get_tuning(job_id)
    return emit_job_result(args, result, print_result)


def cmd_job(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        if args.verb == "cancel":
            status = client.cancel_tuning(args.job_id)
            console.print(
                f"{status.job_id}: {common_pb2.JobState.Name(status.state)} {status.message}"
            )
            return 0
        if args.verb == "list":
            reply = client._call(
                "proxy_nas", "ListSearches", common_pb2.ListJobsRequest(limit=args.limit)
            )
            if args.json:
                dump_json(reply)
                return 0
            for job in reply.jobs:
                state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
                console.print(f"{job.job_id}  {state:<10} {job.progress:>4.0%}  {job.message}")
            return 0
        result = (
            follow(client, args.job_id) if args.verb == "watch" else client.get_tuning(args.job_id)
        )
    return emit_job_result(args, result, print_result)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tune = sub.add_parser("tune", help="proxy search of quantization hyperparameters")
    add_model_args(tune)
    add_data_args(tune)
    target = tune.add_argument_group("quantization configuration (or budgets, solved)")
    target.add_argument("--config", default="", help="layer=option,... or @file.json")
    target.add_argument("--uniform", default="", help="option of every other layer, e.g. int4")
    target.add_argument("--candidates", default="", help="with budgets: options, e.g. int4,int8")
    add_budget_args(tune)
    search = tune.add_argument_group("search")
    search.add_argument(
        "--knob", action="append", default=[], help="name=a,b,c or name=low:high[:log]"
    )
    search.add_argument("--trials", type=int, default=12)
    search.add_argument("--rung", action="append", default=[], help="data_fraction:steps (repeat)")
    search.add_argument("--full", default="", help="full fidelity data_fraction:steps")
    search.add_argument(
        "--checks", type=int, default=0, help="configurations also run at full fidelity"
    )
    search.add_argument("--eta", type=int, default=0, help="successive-halving factor (default 3)")
    search.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    search.add_argument("--parallel", type=int, default=0, help="runs in flight (default 4)")
    search.add_argument("--batch-size", type=int, default=0)
    search.add_argument("--seed", type=int, default=0)
    tune.add_argument("--detach", action="store_true", help="print the job id and return")
    tune.add_argument("--request-id", default="", help="idempotency key: same key, same search")
    add_client_args(tune)
    tune.set_defaults(func=cmd_tune)

    jobs = sub.add_parser("tuning", help="get, watch, cancel or list proxy searches")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    for name, doc in (("get", "a search's result"), ("watch", "live table"), ("cancel", "stop it")):
        verb = verbs.add_parser(name, help=doc)
        verb.add_argument("job_id")
        add_client_args(verb)
        verb.set_defaults(func=cmd_job)
    listing = verbs.add_parser("list", help="recent searches")
    listing.add_argument("--limit", type=int, default=20)
    add_client_args(listing)
    listing.set_defaults(func=cmd_job)
