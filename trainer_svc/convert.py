"""proto <-> domain for the trainer, at the edge; defaults are filled here.

A zero in a request means "the default" (proto3 cannot tell unset from 0);
the domain value objects then check ranges and explain what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bitmesh.errors import InvalidArgument
from bitmesh.formats import Granularity, QuantOption, parse_option
from bitmesh.jobs.records import JobRecord
from bitmesh.limits import InputLimits
from bitmesh.quant.range_spec import RangeEstimator
from bitmesh.rpc.convert import (
    config_to_pb,
    format_from_pb,
    job_event_status_to_pb,
    job_status_to_pb,
    option_from_pb,
    size_accounting_from_pb,
)
from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb
from bitmesh.v1 import common_pb2, trainer_pb2
from trainer_svc.specs import (
    CalibrationSpec,
    Distillation,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)

_SCHEDULES = {
    trainer_pb2.LR_SCHEDULE_UNSPECIFIED: "cosine",
    trainer_pb2.LR_SCHEDULE_CONSTANT: "constant",
    trainer_pb2.LR_SCHEDULE_COSINE: "cosine",
    trainer_pb2.LR_SCHEDULE_STEP: "step",
}
_ESTIMATORS = {
    trainer_pb2.RANGE_ESTIMATOR_UNSPECIFIED: "minmax",
    trainer_pb2.RANGE_ESTIMATOR_MINMAX: "minmax",
    trainer_pb2.RANGE_ESTIMATOR_EMA: "ema",
    trainer_pb2.RANGE_ESTIMATOR_PERCENTILE: "percentile",
}
_GRANULARITIES: dict[Any, Granularity] = {
    common_pb2.GRANULARITY_PER_TENSOR: Granularity.PER_TENSOR,
    common_pb2.GRANULARITY_PER_CHANNEL: Granularity.PER_CHANNEL,
}
_AXES = {
    common_pb2.COST_AXIS_UNSPECIFIED: "bops",
    common_pb2.COST_AXIS_BOPS: "bops",
    common_pb2.COST_AXIS_SIZE: "size",
}
_DEFAULTS = TrainingSettings()
_SEARCH_DEFAULTS: dict[str, Any] = {
    "cost_beta": 2.0,
    "entropy_beta_max": 2.0,
    "warmup_fraction": 0.25,
    "baseline_momentum": 0.9,
    "policy_learning_rate": 0.05,
}


def _or(value: float, default: float) -> float:
    return value if value else default


def _lookup(table: Mapping[Any, Any], value: int, what: str) -> Any:
    if value not in table:
        raise InvalidArgument(f"unknown {what} {value}")
    return table[value]


def training_from_pb(
    msg: trainer_pb2.TrainingSettings, limits: InputLimits | None = None
) -> TrainingSettings:
    if msg.steps < 0 or msg.batch_size < 0 or msg.learning_rate < 0:
        raise InvalidArgument(
            "steps, batch_size and learning_rate must be positive (0 means the default: "
            f"{_DEFAULTS.steps}, {_DEFAULTS.batch_size}, {_DEFAULTS.learning_rate})"
        )
    if msg.batch_size:
        (limits or InputLimits.current()).batch_size("the training batch_size", msg.batch_size)
    return TrainingSettings(
        steps=msg.steps or _DEFAULTS.steps,
        batch_size=msg.batch_size or _DEFAULTS.batch_size,
        learning_rate=_or(msg.learning_rate, _DEFAULTS.learning_rate),
        weight_decay=msg.weight_decay if msg.weight_decay else _DEFAULTS.weight_decay,
        schedule=_lookup(_SCHEDULES, msg.schedule, "learning-rate schedule"),
        checkpoint_every=msg.checkpoint_every,
        seed=msg.seed,
        data_fraction=msg.data_fraction if msg.data_fraction else 1.0,
        eval_every=msg.eval_every,
    )


def _estimator(kind: int, momentum: float = 0.0, percentile: float = 0.0) -> RangeEstimator:
    defaults = RangeEstimator()
    return RangeEstimator(
        name=_lookup(_ESTIMATORS, kind, "activation range estimator"),
        momentum=momentum or defaults.momentum,
        percentile=percentile or defaults.percentile,
    )


def _granularity(value: int) -> Granularity | None:
    return _GRANULARITIES.get(value)


def _config(msg: common_pb2.QuantConfig) -> dict[str, QuantOption]:
    config: dict[str, QuantOption] = {}
    for item in msg.layers:
        if not item.layer:
            raise InvalidArgument("a layer configuration has no layer name")
        if item.layer in config:
            raise InvalidArgument(f"layer {item.layer!r} appears twice in the configuration")
        if not item.option.HasField("weight"):
            raise InvalidArgument(f"layer {item.layer!r}: the option has no weight format")
        config[item.layer] = option_from_pb(item.option)
    return config


def _optional_option(msg: Any, field: str) -> QuantOption | None:
    return option_from_pb(getattr(msg, field)) if msg.HasField(field) else None


def qat_from_pb(msg: trainer_pb2.QatSpec) -> QatSpec:
    kd = msg.distillation
    return QatSpec(
        config=_config(msg.config),
        default_option=_optional_option(msg, "default_option"),
        distillation=Distillation(
            enabled=kd.enabled, alpha=_or(kd.alpha, 0.95), temperature=_or(kd.temperature, 6.0)
        ),
        fold_bn=msg.fold_bn,
        weight_granularity=_granularity(msg.weight_granularity),
        activation_range=_estimator(msg.activation_range, msg.range_momentum, msg.range_percentile),
    )


def calibration_from_pb(msg: trainer_pb2.CalibrationSpec) -> CalibrationSpec:
    if msg.calibration_batches < 0:
        raise InvalidArgument(f"calibration_batches must be >= 0, got {msg.calibration_batches}")
    batches = InputLimits.current().calibration_batches(
        "calibration_batches", msg.calibration_batches or 8
    )
    return CalibrationSpec(
        config=_config(msg.config),
        default_option=_optional_option(msg, "default_option"),
        calibration_batches=batches,
        activation_range=_estimator(msg.activation_range),
        weight_granularity=_granularity(msg.weight_granularity),
    )


def _tie_groups(groups: Any) -> tuple[tuple[str, ...], ...]:
    parsed = []
    for text in groups:
        members = tuple(part.strip() for part in text.split(",") if part.strip())
        parsed.append(members)
    return tuple(parsed)


def search_from_pb(msg: trainer_pb2.SearchSpec) -> SearchSpec:
    if (
        msg.target_axis == common_pb2.COST_AXIS_LATENCY
        or msg.target_axis == common_pb2.COST_AXIS_AVG_WEIGHT_BITS
    ):
        raise InvalidArgument("the search's cost target must be on the BOPS or SIZE axis")
    numbers = {name: getattr(msg, name) or default for name, default in _SEARCH_DEFAULTS.items()}
    return SearchSpec(
        formats=tuple(format_from_pb(f, "search") for f in msg.formats),
        separate_activation=msg.separate_activation,
        axis=_lookup(_AXES, msg.target_axis, "cost axis"),
        cost_target=msg.cost_target,
        target_option=_optional_option(msg, "target_option"),
        one_sided=msg.one_sided,
        switchable_clipping=msg.switchable_clipping,
        tie_groups=_tie_groups(msg.tie_groups),
        weight_granularity=_granularity(msg.weight_granularity) or Granularity.PER_CHANNEL,
        plain_baseline=msg.plain_baseline,
        reward_holdout=msg.reward_holdout_fraction,
        learned_clips=msg.learned_clips,
        size_accounting=size_accounting_from_pb(msg.size_accounting),
        **numbers,
    )


def request_from_pb(msg: trainer_pb2.StartTrainingRequest) -> TrainingRequest:
    """The domain request, or InvalidArgument saying what is missing or wrong."""
    which = msg.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("the request has no job kind: set qat, search or calibration")
    if not msg.HasField("model"):
        raise InvalidArgument("the request has no model")
    if not msg.HasField("dataset"):
        raise InvalidArgument("the request has no dataset (e.g. kind DIGITS)")
    # The caps first (bitmesh.limits), on the numbers alone: nothing is built yet.
    limits = InputLimits.current()
    model = model_spec_from_pb(msg.model, limits)
    dataset = dataset_spec_from_pb(msg.dataset, limits=limits)
    spec: QatSpec | SearchSpec | CalibrationSpec
    if which == "qat":
        spec = qat_from_pb(msg.qat)
    elif which == "search":
        spec = search_from_pb(msg.search)
    else:
        spec = calibration_from_pb(msg.calibration)
    training = training_from_pb(msg.training, limits)
    if msg.dataset.batch_size and not msg.training.batch_size:
        training = replace(training, batch_size=msg.dataset.batch_size)
    limits.data_in_memory(
        f"one training batch of {training.batch_size}",
        training.batch_size,
        max(dataset.shape or (), model.input_shape, key=math.prod),
    )
    return TrainingRequest(
        kind=which,
        model=model,
        dataset=dataset,
        spec=spec,
        training=training,
    )


# -- domain -> proto ----------------------------------------------------------


def metric_point_to_pb(point: dict[str, Any]) -> trainer_pb2.MetricPoint:
    msg = trainer_pb2.MetricPoint(
        step=int(point.get("step", 0)),
        loss=float(point.get("loss", 0.0)),
        accuracy=float(point.get("accuracy", 0.0)),
        entropy=float(point.get("entropy", 0.0)),
        sampled_cost=float(point.get("sampled_cost", 0.0)),
        learning_rate=float(point.get("learning_rate", 0.0)),
    )
    for key in ("eval_accuracy", "eval_loss"):
        value = point.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            setattr(msg, key, float(value))
    return msg


def event_to_pb(record: JobRecord, event: dict[str, Any]) -> trainer_pb2.TrainingEvent:
    msg = trainer_pb2.TrainingEvent(
        status=job_event_status_to_pb(record, event),
        total_steps=int(event.get("total_steps", 0)),
    )
    metrics = event.get("metrics")
    if isinstance(metrics, dict) and metrics:
        msg.latest.CopyFrom(metric_point_to_pb(metrics))
    return msg


def _artifact_to_pb(data: dict[str, Any] | None) -> common_pb2.ArtifactRef | None:
    if not data:
        return None
    return common_pb2.ArtifactRef(
        uri=data["uri"],
        sha256=data["sha256"],
        media_type=data["media_type"],
        size_bytes=int(data["size_bytes"]),
    )


def history_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric points reported so far (a running job's history)."""
    return [e["metrics"] for e in events if isinstance(e.get("metrics"), dict) and e["metrics"]]


def result_to_pb(
    record: JobRecord, events: list[dict[str, Any]] | None = None
) -> trainer_pb2.TrainingResult:
    """A job's status and, once it succeeded, its result; while it runs, the
    history so far (from ``events``)."""
    msg = trainer_pb2.TrainingResult(status=job_status_to_pb(record))
    result = record.result
    if result is None:
        history = history_from_events(events or [])
        msg.history.extend(metric_point_to_pb(p) for p in history)
        if history:
            msg.steps_done = int(history[-1].get("step", 0))
        return msg
    msg.config.CopyFrom(config_to_pb({k: parse_option(v) for k, v in result["config"].items()}))
    evaluation = result["evaluation"]
    costs = evaluation["costs"]
    msg.evaluation.CopyFrom(
        trainer_pb2.Evaluation(
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            samples=int(evaluation["samples"]),
            costs=common_pb2.LayerCosts(**costs),
        )
    )
    msg.history.extend(metric_point_to_pb(p) for p in result["history"])
    artifacts = result.get("artifacts", {})
    for field, key in (
        ("weights", "weights"),
        ("config_artifact", "config"),
        ("metrics", "metrics"),
    ):
        ref = _artifact_to_pb(artifacts.get(key))
        if ref is not None:
            getattr(msg, field).CopyFrom(ref)
    if result.get("final_entropy") is not None:
        msg.final_entropy = float(result["final_entropy"])
    if result.get("target") is not None:
        msg.cost_target = float(result["target"])
    msg.steps_done = int(result["steps_done"])
    msg.seconds = float(result.get("seconds", 0.0))
    msg.resumed_from.extend(int(s) for s in result.get("resumed_from", []))
    return msg
