"""proto <-> domain for the proxy NAS service, at the edge; defaults are filled here.

A zero in a request means "the default" (proto3 cannot tell unset from 0),
except the trial budget: zero trials is refused, not defaulted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bitmesh.errors import InvalidArgument
from bitmesh.formats import QuantOption
from bitmesh.jobs.records import JobRecord
from bitmesh.limits import InputLimits
from bitmesh.rpc.convert import job_event_status_to_pb, job_status_to_pb
from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb
from bitmesh.v1 import proxy_nas_pb2 as pb
from proxy_nas_svc.space import Categorical, FloatRange, Hyperparameter, IntRange
from proxy_nas_svc.spec import Rung, SearchRequest

DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_PARALLEL = 4
DEFAULT_BATCH_SIZE = 64

_TRIAL_STATES = {
    "running": pb.TRIAL_STATE_RUNNING,
    "promoted": pb.TRIAL_STATE_PROMOTED,
    "pruned": pb.TRIAL_STATE_PRUNED,
    "complete": pb.TRIAL_STATE_COMPLETE,
    "failed": pb.TRIAL_STATE_FAILED,
}


def hyperparameter_from_pb(msg: pb.Hyperparameter) -> Hyperparameter:
    which = msg.WhichOneof("domain")
    if which == "categorical":
        return Hyperparameter(msg.name, Categorical(tuple(msg.categorical.choices)))
    if which == "float_range":
        r = msg.float_range
        return Hyperparameter(msg.name, FloatRange(r.low, r.high, r.log))
    if which == "int_range":
        return Hyperparameter(msg.name, IntRange(msg.int_range.low, msg.int_range.high))
    raise InvalidArgument(
        f"knob {msg.name!r} has no domain: give categorical, float_range or int_range"
    )


def rung_from_pb(msg: pb.Rung) -> Rung:
    """A rung; data_fraction 0 (unset) means all the data."""
    return Rung(msg.data_fraction or 1.0, int(msg.steps))


def search_from_pb(
    msg: pb.StartSearchRequest,
    config: Mapping[str, QuantOption],
    budgets: Mapping[str, Any] | None = None,
) -> SearchRequest:
    """The domain request; ``config`` is the request's, or the one solved from its budgets."""
    if msg.dataset.split not in (0, 1):
        raise InvalidArgument(
            "trials train on the train split and score on the test split: leave the "
            "dataset's split unset (or TRAIN)"
        )
    # The caps first (bitmesh.limits), on the numbers alone: nothing is built yet.
    limits = InputLimits.current()
    model = model_spec_from_pb(msg.model, limits)
    dataset = dataset_spec_from_pb(msg.dataset, split="train", limits=limits)
    if msg.batch_size < 0:
        raise InvalidArgument(
            f"batch_size must be >= 0 (0 = {DEFAULT_BATCH_SIZE}), got {msg.batch_size}"
        )
    batch_size = limits.batch_size("batch_size", msg.batch_size or DEFAULT_BATCH_SIZE)
    limits.data_in_memory(
        f"one trial batch of {batch_size}",
        batch_size,
        max(dataset.shape or (), model.input_shape, key=math.prod),
    )
    space = [hyperparameter_from_pb(h) for h in msg.space]
    from proxy_nas_svc.space import validate_space

    return SearchRequest(
        model=model,
        dataset=dataset,
        config=dict(config),
        space=validate_space(space),
        trials=int(msg.trials),
        fidelity=tuple(rung_from_pb(r) for r in msg.fidelity),
        full_fidelity=rung_from_pb(msg.full_fidelity) if msg.HasField("full_fidelity") else None,
        full_checks=int(msg.full_fidelity_checks),
        reduction_factor=msg.reduction_factor or DEFAULT_REDUCTION_FACTOR,
        sampler=msg.sampler.strip().lower() or "tpe",  # type: ignore[arg-type]
        parallel=msg.parallel_trials or DEFAULT_PARALLEL,
        seed=int(msg.seed),
        batch_size=batch_size,
        budgets=dict(budgets or {}),
    )


def trial_to_pb(data: Mapping[str, Any]) -> pb.TrialRecord:
    record = pb.TrialRecord(
        number=int(data["number"]),
        params={k: str(v) for k, v in data["params"].items()},
        rung=int(data["rung"]),
        score=float(data["score"]),
        state=_TRIAL_STATES.get(str(data["state"]), pb.TRIAL_STATE_UNSPECIFIED),
        reason=str(data.get("reason", "")),
        training_steps=int(data.get("training_steps", 0)),
        rung_scores=[float(s) for s in data.get("rung_scores", [])],
    )
    if data.get("full_score") is not None:
        record.full_score = float(data["full_score"])
    return record


def event_to_pb(record: JobRecord, event: Mapping[str, Any]) -> pb.SearchEvent:
    message = pb.SearchEvent(status=job_event_status_to_pb(record, dict(event)))
    if event.get("trial"):
        message.trial.CopyFrom(trial_to_pb(event["trial"]))
    if event.get("best"):
        message.best.CopyFrom(trial_to_pb(event["best"]))
    return message


def trials_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest state of every trial, from a running search's events."""
    latest: dict[int, dict[str, Any]] = {}
    for event in events:
        trial = event.get("trial")
        if trial:
            latest[int(trial["number"])] = trial
    return [latest[n] for n in sorted(latest)]


def result_to_pb(record: JobRecord, events: list[dict[str, Any]]) -> pb.SearchResult:
    """The result of a finished search, or what is known so far of a running one."""
    reply = pb.SearchResult(status=job_status_to_pb(record))
    config = record.request.get("config_labels", {})
    reply.config.update({k: str(v) for k, v in config.items()})
    result = record.result
    if result is None:
        trials = trials_from_events(events)
        bests = [e["best"] for e in events if e.get("best")]
        reply.trials.extend(trial_to_pb(t) for t in trials)
        if bests:
            reply.best_trial = int(bests[-1]["number"])
            reply.best_params.update(bests[-1]["params"])
            reply.best_score = float(bests[-1]["score"])
        else:
            reply.best_trial = -1
        return reply
    reply.best_trial = int(result["best_trial"])
    reply.best_params.update({k: str(v) for k, v in result["best_params"].items()})
    reply.best_score = float(result["best_score"])
    reply.trials.extend(trial_to_pb(t) for t in result["trials"])
    q = result["quality"]
    reply.quality.CopyFrom(
        pb.ProxyQuality(
            kendall_tau=float(q["kendall_tau"]) if q["kendall_tau"] is not None else 0.0,
            full_fidelity_trials=int(q["full_fidelity_trials"]),
            search_steps=int(q["search_steps"]),
            full_search_steps=int(q["full_search_steps"]),
            compute_ratio=float(q["compute_ratio"]),
            check_steps=int(q["check_steps"]),
        )
    )
    return reply
