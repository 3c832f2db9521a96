"""The sensitivity service over real gRPC: job pattern, report, cache, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import load_settings
from bitmesh.v1 import common_pb2, sensitivity_pb2
from sensitivity_svc.servicer import build

pytestmark = pytest.mark.integration

DIGITS = common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS, batch_size=64)
MODEL = common_pb2.ModelRef(architecture="digits_cnn")
FAST = sensitivity_pb2.EstimatorSettings(
    target_relative_se=0.2, max_samples=30, seed=1, num_batches=1
)


def option(name: str) -> common_pb2.QuantOption:
    return common_pb2.QuantOption(weight=common_pb2.NumericFormat(name=name))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    settings = load_settings(artifact_root=str(tmp_path_factory.mktemp("art")))
    running = start_service("sensitivity", build, settings, port=0)
    with Client(settings, addresses={"sensitivity": f"127.0.0.1:{running.port}"}, timeout=120) as c:
        yield c
    running.stop(1)


def run(
    client: Client, request: sensitivity_pb2.StartAnalysisRequest
) -> tuple[sensitivity_pb2.AnalysisResult, list]:
    job = client.start_analysis(request)
    events = list(client.watch_analysis(job.job_id, timeout=300))
    return client.get_analysis(job.job_id), events


def test_report_streams_progress_then_caches(client: Client) -> None:
    request = sensitivity_pb2.StartAnalysisRequest(
        model=MODEL,
        dataset=DIGITS,
        options=[option("int4"), option("int8"), option("e4m3")],
        settings=FAST,
    )
    first, events = run(client, request)
    assert first.status.state == common_pb2.JOB_STATE_SUCCEEDED, first.status.error
    assert events and events[-1].status.state == common_pb2.JOB_STATE_SUCCEEDED
    assert any(e.layers for e in events), "watch should carry running per-layer estimates"
    report = first.report
    assert not report.cached and len(report.layers) == 5
    for layer in report.layers:
        assert layer.samples >= 2 and layer.standard_error >= 0
        assert layer.normalized_trace == pytest.approx(layer.trace / layer.layer.parameters)
        keys = [p.option_key for p in layer.perturbations]
        assert keys == ["int4/int4", "int8/int8", "e4m3/e4m3"]
        for p in layer.perturbations:
            assert p.omega == pytest.approx(layer.normalized_trace * p.weight_error_sq)
            assert p.costs.bops > 0
        int4, int8 = layer.perturbations[0], layer.perturbations[1]
        assert int4.weight_error_sq > int8.weight_error_sq > 0

    again, _ = run(client, request)
    assert again.report.cached  # how much faster a cached report is: bench_sensitivity
    assert [layer.trace for layer in again.report.layers] == [
        layer.trace for layer in report.layers
    ]

    wider = sensitivity_pb2.StartAnalysisRequest()
    wider.CopyFrom(request)
    wider.options.append(option("int2"))
    more, _ = run(client, wider)
    assert more.report.cached
    for old, new in zip(report.layers, more.report.layers, strict=True):
        assert new.trace == old.trace
        assert [p.option_key for p in new.perturbations][-1] == "int2/int2"
        assert new.perturbations[0].omega == pytest.approx(old.perturbations[0].omega)


def test_cancel_stops_a_running_analysis(client: Client) -> None:
    slow = sensitivity_pb2.EstimatorSettings(target_relative_se=0.0001, max_samples=100000, seed=2)
    job = client.start_analysis(
        sensitivity_pb2.StartAnalysisRequest(
            model=MODEL, dataset=DIGITS, options=[option("int4")], settings=slow
        )
    )
    states, cancelled_while_running = [], False
    for event in client.watch_analysis(job.job_id, timeout=300):
        states.append(event.status.state)
        running = event.status.state == common_pb2.JOB_STATE_RUNNING
        if running and event.layers and not cancelled_while_running:
            # Running work with per-layer estimates: the cancel must stop it
            # between units, not find a job that is still queued.
            client.cancel_analysis(job.job_id)
            cancelled_while_running = True
    assert cancelled_while_running, states
    assert states[-1] == common_pb2.JOB_STATE_CANCELLED
    final = client.get_analysis(job.job_id)
    assert final.status.state == common_pb2.JOB_STATE_CANCELLED
    assert not final.HasField("report") or not final.report.layers


def test_bad_input_gets_clear_statuses(client: Client, tmp_path: Path) -> None:
    base = sensitivity_pb2.StartAnalysisRequest(
        model=MODEL, dataset=DIGITS, options=[option("int4")], settings=FAST
    )

    unknown_format = sensitivity_pb2.StartAnalysisRequest()
    unknown_format.CopyFrom(base)
    unknown_format.options[0].weight.name = "int17"
    with pytest.raises(InvalidArgument, match="int17"):
        client.start_analysis(unknown_format)

    no_options = sensitivity_pb2.StartAnalysisRequest(model=MODEL, dataset=DIGITS, settings=FAST)
    with pytest.raises(InvalidArgument, match="option"):
        client.start_analysis(no_options)

    missing_folder = sensitivity_pb2.StartAnalysisRequest()
    missing_folder.CopyFrom(base)
    missing_folder.dataset.CopyFrom(
        common_pb2.DatasetRef(
            kind=common_pb2.DATASET_KIND_IMAGE_FOLDER, path=str(tmp_path / "nope"), shape=[1, 8, 8]
        )
    )
    with pytest.raises(NotFound):
        client.start_analysis(missing_folder)

    too_few_classes = sensitivity_pb2.StartAnalysisRequest()
    too_few_classes.CopyFrom(base)
    too_few_classes.model.num_classes = 5
    with pytest.raises(InvalidArgument, match="label"):
        client.start_analysis(too_few_classes)

    from bitmesh.models.digits_cnn import DigitsCNN

    broken = DigitsCNN()
    state = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
        for k, v in broken.state_dict().items()
    }
    weights = tmp_path / "nan.pt"
    torch.save(state, weights)
    nan_model = sensitivity_pb2.StartAnalysisRequest()
    nan_model.CopyFrom(base)
    nan_model.model.weights = str(weights)
    with pytest.raises(FailedPrecondition, match=r"(?i)nan|finite"):
        client.start_analysis(nan_model)


def test_estimator_settings_the_analysis_cannot_use_are_refused_at_start(client: Client) -> None:
    """An analysis takes at least 10 samples per layer, and one per batch; a
    request asking for fewer used to be accepted, then FAIL when it ran."""
    before = len(client.list_analyses().jobs)
    few = sensitivity_pb2.EstimatorSettings(max_samples=9, num_batches=1)
    with pytest.raises(InvalidArgument, match=r"max_samples must be in \[10, 100000\].*got 9"):
        client.start_analysis(
            sensitivity_pb2.StartAnalysisRequest(
                model=MODEL, dataset=DIGITS, options=[option("int4")], settings=few
            )
        )
    more_batches = sensitivity_pb2.EstimatorSettings(max_samples=10, num_batches=11)
    with pytest.raises(InvalidArgument, match=r"num_batches \(11\) must be at most max_samples"):
        client.start_analysis(
            sensitivity_pb2.StartAnalysisRequest(
                model=MODEL, dataset=DIGITS, options=[option("int4")], settings=more_batches
            )
        )
    assert len(client.list_analyses().jobs) == before  # nothing was queued
    # The minimum itself is accepted and runs to a result.
    least = sensitivity_pb2.EstimatorSettings(target_relative_se=0.5, max_samples=10, seed=1)
    result, _ = run(
        client,
        sensitivity_pb2.StartAnalysisRequest(
            model=MODEL, dataset=DIGITS, options=[option("int4")], settings=least
        ),
    )
    assert result.status.state == common_pb2.JOB_STATE_SUCCEEDED, result.status.error
    assert all(layer.samples <= 10 for layer in result.report.layers)
