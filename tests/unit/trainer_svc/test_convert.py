"""proto <-> domain at the trainer's edge."""

from __future__ import annotations

import pytest

from bitmesh.errors import InvalidArgument
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import trainer_pb2 as t
from trainer_svc.convert import event_to_pb, request_from_pb, result_to_pb
from trainer_svc.specs import QatSpec, SearchSpec

pytestmark = pytest.mark.unit


def _option(name: str, activation: str = "") -> c.QuantOption:
    option = c.QuantOption(weight=c.NumericFormat(name=name))
    if activation:
        option.activation.CopyFrom(c.NumericFormat(name=activation))
    return option


def _base(**kind: object) -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        **kind,  # type: ignore[arg-type]
    )


def test_qat_request_with_defaults() -> None:
    request = request_from_pb(
        _base(
            qat=t.QatSpec(
                config=c.QuantConfig(layers=[c.LayerConfig(layer="conv1", option=_option("int8"))]),
                default_option=_option("int4", "uint4"),
                distillation=t.Distillation(enabled=True),
                activation_range=t.RANGE_ESTIMATOR_PERCENTILE,
            )
        )
    )
    assert request.kind == "qat" and isinstance(request.spec, QatSpec)
    assert request.spec.config["conv1"].key == "int8/int8"
    assert request.spec.default_option is not None
    assert request.spec.default_option.key == "int4/uint4"
    assert (request.spec.distillation.alpha, request.spec.distillation.temperature) == (0.95, 6.0)
    assert request.spec.activation_range.name == "percentile"
    assert (request.training.steps, request.training.batch_size, request.training.schedule) == (
        300,
        64,
        "cosine",
    )
    assert request.model.input_shape == (1, 8, 8)


def test_search_request_and_tie_groups() -> None:
    request = request_from_pb(
        _base(
            search=t.SearchSpec(
                formats=[c.NumericFormat(name="int4"), c.NumericFormat(name="fp8_e4m3")],
                target_option=_option("int4"),
                tie_groups=["conv1, conv2"],
                one_sided=True,
            ),
            training=t.TrainingSettings(steps=50, learning_rate=0.1),
        )
    )
    spec = request.spec
    assert isinstance(spec, SearchSpec)
    assert [f.name for f in spec.formats] == ["int4", "e4m3"]
    assert spec.tie_groups == (("conv1", "conv2"),) and spec.one_sided
    assert (spec.cost_beta, spec.warmup_fraction) == (2.0, 0.25)
    assert (request.training.steps, request.training.learning_rate) == (50, 0.1)


@pytest.mark.parametrize(
    ("request_pb", "message"),
    [
        (t.StartTrainingRequest(), "no job kind"),
        (_base(qat=t.QatSpec(), training=t.TrainingSettings(steps=-5)), "must be positive"),
        (
            _base(search=t.SearchSpec(formats=[c.NumericFormat(name="int7x")], cost_target=1)),
            "unknown numeric format",
        ),
        (_base(search=t.SearchSpec(target_axis=c.COST_AXIS_LATENCY)), "BOPS or SIZE"),
        (
            _base(
                qat=t.QatSpec(
                    config=c.QuantConfig(
                        layers=[c.LayerConfig(layer="a"), c.LayerConfig(layer="a")]
                    )
                )
            ),
            "no weight format",
        ),
    ],
)
def test_bad_requests(request_pb: t.StartTrainingRequest, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        request_from_pb(request_pb)


def _record(result: dict | None, state: JobState) -> JobRecord:
    return JobRecord(job_id="search-1", kind="search", state=state, result=result)


def test_result_and_events_to_proto() -> None:
    artifact = {"uri": "file:///x", "sha256": "ab" * 32, "size_bytes": 10, "media_type": "m"}
    result = {
        "config": {"conv1": "int8/int8", "fc2": "e4m3/e4m3:pt"},
        "evaluation": {
            "accuracy": 0.9,
            "loss": 0.3,
            "samples": 360,
            "costs": {"size_bytes": 1.0, "bops": 2.0, "latency_ms": 0.0, "scale_bytes": 4.0},
        },
        "history": [{"step": 10, "loss": 1.0, "entropy": 0.5, "sampled_cost": 3.0}],
        "steps_done": 10,
        "resumed_from": [5],
        "final_entropy": 0.05,
        "target": 2.5,
        "artifacts": {"weights": artifact, "config": artifact, "metrics": artifact},
    }
    msg = result_to_pb(_record(result, JobState.SUCCEEDED))
    assert msg.status.state == c.JOB_STATE_SUCCEEDED
    assert [(item.layer, item.option.weight.name) for item in msg.config.layers] == [
        ("conv1", "int8"),
        ("fc2", "e4m3"),
    ]
    assert msg.config.layers[1].option.granularity == c.GRANULARITY_PER_TENSOR
    assert (msg.evaluation.accuracy, msg.evaluation.costs.bops) == (0.9, 2.0)
    assert msg.history[0].entropy == 0.5 and not msg.history[0].HasField("eval_accuracy")
    assert (msg.final_entropy, msg.cost_target, list(msg.resumed_from)) == (0.05, 2.5, [5])
    assert msg.weights.sha256 == "ab" * 32
    running = result_to_pb(
        _record(None, JobState.RUNNING),
        [{"state": "running"}, {"metrics": {"step": 4, "loss": 2.0, "eval_accuracy": 0.5}}],
    )
    assert running.steps_done == 4 and running.history[0].eval_accuracy == 0.5
    event = event_to_pb(
        _record(None, JobState.RUNNING),
        {"state": "running", "progress": 0.5, "metrics": {"step": 4}, "total_steps": 8},
    )
    assert (event.latest.step, event.total_steps, event.status.progress) == (4, 8, 0.5)
