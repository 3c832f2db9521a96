"""proto <-> domain conversions shared by every service (torch-free).

Domain code never sees a proto: servicers call these at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from bitmesh.costs import LayerCosts, SizeAccounting, check_size_accounting
from bitmesh.errors import InvalidArgument
from bitmesh.formats import (
    FormatKind,
    Granularity,
    NumericFormat,
    QuantOption,
    format_from_spec,
    get_format,
)
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.v1 import common_pb2 as pb

_GRANULARITY_FROM_PB = {
    pb.GRANULARITY_PER_TENSOR: Granularity.PER_TENSOR,
    pb.GRANULARITY_PER_CHANNEL: Granularity.PER_CHANNEL,
    pb.GRANULARITY_PER_BLOCK: Granularity.PER_BLOCK,
}
_GRANULARITY_TO_PB = {v: k for k, v in _GRANULARITY_FROM_PB.items()}
_NATIVE_BY_LAYOUT = {(8, 7): "bf16", (5, 10): "fp16", (8, 23): "fp32"}


def format_from_pb(msg: pb.NumericFormat, role: str) -> NumericFormat:
    """A registry format from any of the three ways a request may name it."""
    which = msg.WhichOneof("kind")
    if which == "name":
        return get_format(msg.name)
    if which == "integer":
        return format_from_spec(FormatKind.INT, bits=msg.integer.bits, signed=msg.integer.is_signed)
    if which == "floating":
        e, m = msg.floating.exponent_bits, msg.floating.mantissa_bits
        native = _NATIVE_BY_LAYOUT.get((e, m))
        if native:
            return get_format(native)
        return format_from_spec(FormatKind.FP, exponent_bits=e, mantissa_bits=m)
    raise InvalidArgument(f"{role} format is missing: set name, integer or floating")


def format_to_pb(fmt: NumericFormat) -> pb.NumericFormat:
    return pb.NumericFormat(name=fmt.name)


def option_from_pb(
    msg: pb.QuantOption, default: Granularity = Granularity.PER_CHANNEL
) -> QuantOption:
    weight = format_from_pb(msg.weight, "weight")
    activation = (
        format_from_pb(msg.activation, "activation") if msg.HasField("activation") else weight
    )
    granularity = _GRANULARITY_FROM_PB.get(msg.granularity, default)
    return QuantOption(weight=weight, activation=activation, granularity=granularity)


def option_to_pb(option: QuantOption) -> pb.QuantOption:
    return pb.QuantOption(
        weight=format_to_pb(option.weight),
        activation=format_to_pb(option.activation),
        granularity=_GRANULARITY_TO_PB[option.granularity],
    )


def options_from_pb(msgs: Iterable[pb.QuantOption]) -> list[QuantOption]:
    options = [option_from_pb(m) for m in msgs]
    keys = [o.key for o in options]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidArgument(f"quantization options repeated: {', '.join(repeated)}")
    return options


def config_from_pb(msg: pb.QuantConfig) -> dict[str, QuantOption]:
    config: dict[str, QuantOption] = {}
    for item in msg.layers:
        if not item.layer:
            raise InvalidArgument("a layer configuration has no layer name")
        if item.layer in config:
            raise InvalidArgument(f"layer {item.layer!r} appears twice in the configuration")
        config[item.layer] = option_from_pb(item.option)
    return config


def config_to_pb(config: dict[str, QuantOption]) -> pb.QuantConfig:
    return pb.QuantConfig(
        layers=[pb.LayerConfig(layer=k, option=option_to_pb(v)) for k, v in config.items()]
    )


_ACCOUNTING_FROM_PB: dict[int, SizeAccounting] = {
    pb.SIZE_ACCOUNTING_UNSPECIFIED: "weights_and_scales",
    pb.SIZE_ACCOUNTING_WEIGHTS_AND_SCALES: "weights_and_scales",
    pb.SIZE_ACCOUNTING_WEIGHTS_ONLY: "weights_only",
}
_ACCOUNTING_TO_PB: dict[str, pb.SizeAccounting] = {
    "weights_and_scales": pb.SIZE_ACCOUNTING_WEIGHTS_AND_SCALES,
    "weights_only": pb.SIZE_ACCOUNTING_WEIGHTS_ONLY,
}


def size_accounting_from_pb(value: int) -> SizeAccounting:
    """What a size budget counts; unset means weights and scales."""
    found = _ACCOUNTING_FROM_PB.get(value)
    if found is None:
        raise InvalidArgument(
            f"unknown size accounting {value}; use WEIGHTS_AND_SCALES or WEIGHTS_ONLY"
        )
    return found


def size_accounting_to_pb(value: str) -> pb.SizeAccounting:
    return _ACCOUNTING_TO_PB[check_size_accounting(value)]


def costs_to_pb(costs: LayerCosts) -> pb.LayerCosts:
    return pb.LayerCosts(
        size_bytes=costs.size_bytes,
        bops=costs.bops,
        latency_ms=costs.latency_ms,
        scale_bytes=costs.scale_bytes,
    )


def costs_from_pb(msg: pb.LayerCosts) -> LayerCosts:
    return LayerCosts(
        size_bytes=msg.size_bytes,
        bops=msg.bops,
        latency_ms=msg.latency_ms,
        scale_bytes=msg.scale_bytes,
    )


_STATE_TO_PB = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def job_status_to_pb(record: JobRecord) -> pb.JobStatus:
    return pb.JobStatus(
        job_id=record.job_id,
        state=_STATE_TO_PB[record.state],
        progress=record.progress,
        stage=record.stage,
        message=record.message,
        error=record.error,
        created=_timestamp(record.created),
        updated=_timestamp(record.updated),
        kind=record.kind,
    )


def job_event_status_to_pb(record: JobRecord, event: dict[str, object]) -> pb.JobStatus:
    """A JobStatus for one stored event (state and progress as of that event)."""
    status = job_status_to_pb(record)
    state = event.get("state")
    if isinstance(state, str):
        status.state = _STATE_TO_PB[JobState(state)]
    progress = event.get("progress")
    if isinstance(progress, int | float):
        status.progress = float(progress)
    for key in ("stage", "message"):
        value = event.get(key)
        if isinstance(value, str):
            setattr(status, key, value)
    return status
