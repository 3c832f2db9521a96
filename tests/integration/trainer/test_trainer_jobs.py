"""Trainer jobs end to end: gRPC service -> Redis -> Celery worker -> results.

Digits data, the small CNN, a real Redis and a real prefork worker process.
"""

from __future__ import annotations

import pytest

from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import trainer_pb2 as t
from tests.integration.trainer.conftest import TrainerMesh
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

REDIS_DB = 11
MIXED = {"conv1": "int8", "conv2": "int4", "conv3": "e2m1", "fc1": "int4/int8", "fc2": "e4m3"}


def _option(text: str) -> c.QuantOption:
    weight, _, activation = text.partition("/")
    option = c.QuantOption(weight=c.NumericFormat(name=weight))
    if activation:
        option.activation.CopyFrom(c.NumericFormat(name=activation))
    return option


def _request(weights: str = "", **kind: object) -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=c.ModelRef(architecture="digits_cnn", weights=weights),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        **kind,  # type: ignore[arg-type]
    )


def _finish(mesh: TrainerMesh, job_id: str, timeout: float = 120) -> t.TrainingResult:
    with mesh.client() as client:
        events = list(client.watch_training(job_id, timeout=timeout))
        assert events and events[-1].status.state == c.JOB_STATE_SUCCEEDED, events[-1].status
        return client.get_training(job_id)


def test_bad_requests_are_refused_and_nothing_is_enqueued(
    mesh: TrainerMesh, pretrained: str
) -> None:
    before = len(mesh.store().list())
    search = t.SearchSpec(
        formats=[c.NumericFormat(name="int4"), c.NumericFormat(name="int8")],
        target_option=_option("int2"),
    )
    bad = [
        (
            _request(
                qat=t.QatSpec(
                    config=c.QuantConfig(
                        layers=[c.LayerConfig(layer="conv9", option=_option("int4"))]
                    )
                )
            ),
            InvalidArgument,
            "lacks: conv9",
        ),
        (
            _request(qat=t.QatSpec(default_option=_option("int5x"))),
            InvalidArgument,
            "unknown numeric format",
        ),
        (_request(search=search), FailedPrecondition, "below the cheapest"),
        (
            _request(qat=t.QatSpec(), training=t.TrainingSettings(learning_rate=50)),
            InvalidArgument,
            "learning_rate",
        ),
        (
            _request(qat=t.QatSpec(), training=t.TrainingSettings(steps=5_000_000)),
            InvalidArgument,
            "steps",
        ),
        (
            t.StartTrainingRequest(
                model=c.ModelRef(architecture="digits_cnn", input_shape=[3, 16, 16]),
                dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
                qat=t.QatSpec(),
            ),
            InvalidArgument,
            "samples of shape",
        ),
        (
            _request(qat=t.QatSpec(distillation=t.Distillation(enabled=True))),
            FailedPrecondition,
            "trained full-precision teacher",
        ),
        (t.StartTrainingRequest(), InvalidArgument, "no job kind"),
    ]
    with mesh.client() as client:
        for request, error, message in bad:
            with pytest.raises(error, match=message):
                client.start_training(request)
    assert len(mesh.store().list()) == before
    assert mesh.queue_length() == 0


def test_one_shot_search_reaches_the_w4a4_bops_target(mesh: TrainerMesh) -> None:
    search = t.SearchSpec(
        formats=[c.NumericFormat(name=n) for n in ("int2", "int4", "int8")],
        target_option=_option("int4"),  # the BOPs of uniform W4A4
    )
    request = _request(
        search=search, training=t.TrainingSettings(steps=300, learning_rate=0.05, seed=2)
    )
    with mesh.client() as client:
        job_id = client.start_training(request).job_id
    result = _finish(mesh, job_id)
    target = result.cost_target
    assert target == pytest.approx(7_366_656)  # 460,416 MACs x 4 x 4
    assert result.final_entropy < 0.1
    assert abs(result.evaluation.costs.bops / target - 1) <= 0.10
    assert result.evaluation.accuracy > 0.8  # chance is 0.1
    assert {item.layer for item in result.config.layers} == {
        "conv1",
        "conv2",
        "conv3",
        "fc1",
        "fc2",
    }
    history = list(result.history)
    assert history[0].entropy > 1.0 > 0.1 > history[-1].entropy  # log 3 = 1.10 at the start
    assert all(p.sampled_cost > 0 for p in history)
    assert result.steps_done == 300 and not result.resumed_from
    store = mesh.artifacts()
    assert store.get_bytes(result.weights.sha256)
    assert store.get_json(result.config_artifact.sha256)["config"]


def test_qat_at_a_mixed_configuration_with_and_without_distillation(
    mesh: TrainerMesh, pretrained: str
) -> None:
    config = c.QuantConfig(
        layers=[c.LayerConfig(layer=k, option=_option(v)) for k, v in MIXED.items()]
    )
    jobs = {}
    with mesh.client() as client:
        for distill in (True, False):
            spec = t.QatSpec(config=config, distillation=t.Distillation(enabled=distill))
            request = _request(
                pretrained, qat=spec, training=t.TrainingSettings(steps=150, learning_rate=0.01)
            )
            jobs[distill] = client.start_training(request).job_id
    for distill, job_id in jobs.items():
        result = _finish(mesh, job_id)
        assert result.evaluation.accuracy > 0.9, (distill, result.evaluation)
        chosen = {item.layer: item.option for item in result.config.layers}
        assert chosen["conv3"].weight.name == "e2m1" and chosen["fc1"].activation.name == "uint8"
        assert result.evaluation.costs.bops > 0 and result.evaluation.samples == 360
        assert len(result.history) > 0


def test_calibration_is_the_fast_baseline(mesh: TrainerMesh, pretrained: str) -> None:
    spec = t.CalibrationSpec(default_option=_option("int8"), calibration_batches=4)
    with mesh.client() as client:
        job_id = client.start_training(_request(pretrained, calibration=spec)).job_id
    result = _finish(mesh, job_id)
    assert result.evaluation.accuracy > 0.9
    assert result.steps_done == 4
    listed = wait_for(lambda: mesh.client().list_training().jobs, 5, "the job list")
    assert job_id in {job.job_id for job in listed}
