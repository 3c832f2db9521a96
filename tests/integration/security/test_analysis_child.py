"""A program file's analysis through a real sensitivity server (issue 16): its
load, data checks and Hessian traces run in a child of the job
(sensitivity_svc/isolated.py), never in the server's process.

The traces equal the in-process ones of the same weights given as an
architecture; a program that allocates without bound only at the batch size
(past the sandbox's one-sample probe) fails its job with the cap named; a
cancel kills the child and a killed child fails the job; the service stays
SERVING throughout. Each analysis pays one child start (a torch import).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.client import Client
from bitmesh.models import model_cache
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.rpc.convert import options_from_pb
from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, sensitivity_pb2
from sensitivity_svc.analysis import analyse
from sensitivity_svc.convert import MAX_SAMPLES, settings_from_pb
from sensitivity_svc.isolated import live_children, spare_pid
from sensitivity_svc.jobs import prepare
from sensitivity_svc.servicer import build
from tests.hostile_models import INPUT_SHAPE, NUM_CLASSES, batch_allocating_program
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

DIGITS_SHAPE = (1, 8, 8)
DIGITS = common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS, batch_size=32)
FAST = sensitivity_pb2.EstimatorSettings(
    target_relative_se=0.2, max_samples=30, seed=1, num_batches=1
)
#: An analysis that runs until it is stopped.
ENDLESS = sensitivity_pb2.EstimatorSettings(
    target_relative_se=0.0001, max_samples=MAX_SAMPLES, seed=2, num_batches=1
)
INT4 = common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int4"))
INT8 = common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int8"))
DEADLINE_S = 300.0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits_cnn as a .pt2 and as its state_dict (the same weights), and a
    program that allocates 40 GB per sample past the first."""
    root = tmp_path_factory.mktemp("programs")
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    torch.save(model.state_dict(), root / "digits.pt")
    program = torch.export.export(
        model,
        (torch.randn(2, *DIGITS_SHAPE),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, root / "digits.pt2")
    return {
        "program": root / "digits.pt2",
        "weights": root / "digits.pt",
        "batch_alloc": batch_allocating_program(root / "batch_alloc.pt2"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    patch = pytest.MonkeyPatch()
    patch.setenv("BITMESH_AUTH_TOKEN_FOR_THE_CHILD_CHECK", "must-not-leak")
    running = start_service(
        "sensitivity", build, make_settings(tmp_path_factory.mktemp("root")), port=0
    )
    try:
        yield running
    finally:
        running.stop(0)
        patch.undo()


@pytest.fixture(scope="module")
def client(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    settings = make_settings(tmp_path_factory.mktemp("client"))
    with Client(
        settings, addresses={"sensitivity": f"127.0.0.1:{server.port}"}, timeout=DEADLINE_S
    ) as c:
        yield c


def _program(path: Path, shape: tuple[int, ...] = DIGITS_SHAPE, classes: int = 10) -> Any:
    return common_pb2.ModelRef(
        exported_program=str(path), input_shape=list(shape), num_classes=classes
    )


def _request(
    model: common_pb2.ModelRef,
    settings: sensitivity_pb2.EstimatorSettings = FAST,
    dataset: common_pb2.DatasetRef = DIGITS,
) -> sensitivity_pb2.StartAnalysisRequest:
    return sensitivity_pb2.StartAnalysisRequest(
        model=model, dataset=dataset, options=[INT4], settings=settings
    )


def _run(
    client: Client, request: sensitivity_pb2.StartAnalysisRequest
) -> tuple[sensitivity_pb2.AnalysisResult, list[sensitivity_pb2.SensitivityEvent]]:
    job = client.start_analysis(request)
    events = list(client.watch_analysis(job.job_id, timeout=DEADLINE_S))
    return client.get_analysis(job.job_id), events


def _assert_serving(port: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bitmesh.v1.SensitivityService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_program_is_analysed_in_a_child_with_the_in_process_traces(
    client: Client, files: dict[str, Path]
) -> None:
    model_cache.forget_models()
    result, events = _run(client, _request(_program(files["program"])))
    assert result.status.state == common_pb2.JOB_STATE_SUCCEEDED, result.status.error
    assert not result.report.cached
    assert any(e.layers for e in events), "Watch carries the child's running estimates"
    # The server's process never loaded the program: its model cache holds none.
    assert not any(spec.source != "architecture" for spec, _ in model_cache._loaded)
    assert live_children() == []

    # The same weights as an architecture, analysed in this process.
    arch = common_pb2.ModelRef(
        architecture="digits_cnn", weights=str(files["weights"]), input_shape=list(DIGITS_SHAPE)
    )
    prepared = prepare(
        model_spec_from_pb(arch),
        dataset_spec_from_pb(DIGITS),
        options_from_pb([INT4, INT8]),
        settings_from_pb(FAST),
        DIGITS.batch_size,
        False,
    )
    assert prepared.model is not None and prepared.program is None  # no child for it
    reference = analyse(
        prepared.model, prepared.batches, prepared.layers, prepared.options, prepared.settings
    )
    got = result.report.layers
    assert [layer.layer.name for layer in got] == [layer.name for layer in reference.layers]
    for mine, theirs in zip(got, reference.layers, strict=True):
        assert mine.samples == theirs.samples
        assert mine.trace == pytest.approx(theirs.trace, rel=1e-5, abs=1e-9)
        assert mine.standard_error == pytest.approx(theirs.standard_error, rel=1e-5, abs=1e-9)
        omega = mine.perturbations[0].omega
        assert omega == pytest.approx(theirs.perturbations[0].omega, rel=1e-5, abs=1e-12)

    # One more option on the stored traces: priced in a child too (the
    # program's weights), as the in-process analysis prices it.
    wider = _request(_program(files["program"]))
    wider.options.append(INT8)
    more, _ = _run(client, wider)
    assert more.status.state == common_pb2.JOB_STATE_SUCCEEDED, more.status.error
    assert more.report.cached
    for mine, theirs in zip(more.report.layers, reference.layers, strict=True):
        assert [p.option_key for p in mine.perturbations] == ["int4/int4", "int8/int8"]
        int8 = mine.perturbations[1].omega
        assert int8 == pytest.approx(theirs.perturbations[1].omega, rel=1e-5, abs=1e-12)
    assert not any(spec.source != "architecture" for spec, _ in model_cache._loaded)


def test_an_allocation_past_the_probe_fails_the_job_and_the_service_serves(
    client: Client, server: RunningServer, files: dict[str, Path]
) -> None:
    synthetic = common_pb2.DatasetRef(
        kind=common_pb2.DATASET_KIND_SYNTHETIC,
        shape=list(INPUT_SHAPE),
        num_classes=NUM_CLASSES,
        batch_size=8,
    )
    model = _program(files["batch_alloc"], INPUT_SHAPE, NUM_CLASSES)
    result, events = _run(client, _request(model, dataset=synthetic))
    assert result.status.state == common_pb2.JOB_STATE_FAILED
    error = result.status.error
    assert "BITMESH_ANALYSIS_MEMORY_BYTES=" in error and "memory" in error, error
    assert len(error) <= 400
    assert events[-1].status.state == common_pb2.JOB_STATE_FAILED
    assert live_children() == []
    _assert_serving(server.port)


def _running_child(client: Client, model: common_pb2.ModelRef) -> tuple[str, int, Iterator[Any]]:
    """Start an endless analysis; return its job, its child's pid once the
    child reports estimates, and the rest of its Watch stream."""
    job = client.start_analysis(_request(model, ENDLESS))
    stream = client.watch_analysis(job.job_id, timeout=DEADLINE_S)
    for event in stream:
        if event.status.state == common_pb2.JOB_STATE_RUNNING and event.layers:
            (pid,) = live_children()
            return job.job_id, pid, stream
        assert event.status.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
    raise AssertionError("the analysis ended before reporting estimates")


def test_cancelling_a_program_analysis_kills_its_child(
    client: Client, server: RunningServer, files: dict[str, Path]
) -> None:
    job_id, pid, stream = _running_child(client, _program(files["program"]))
    # The child is the sandbox's kind: no secrets, an empty folder, a memory cap.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert "BITMESH_AUTH_TOKEN_FOR_THE_CHILD_CHECK" in os.environ
    assert not {n for n in names if n.startswith("BITMESH_") and n != "BITMESH_DEVICE"}
    assert "REDIS_URL" not in names
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    assert cwd.parent.name.startswith("bitmesh-analysis-") and list(cwd.iterdir()) == []
    limits = Path(f"/proc/{pid}/limits").read_text()
    address_space = next(line for line in limits.splitlines() if "address space" in line)
    assert address_space.split()[3] != "unlimited"

    client.cancel_analysis(job_id)
    states = [event.status.state for event in stream]
    assert states[-1] == common_pb2.JOB_STATE_CANCELLED
    assert client.get_analysis(job_id).status.state == common_pb2.JOB_STATE_CANCELLED
    assert _gone(pid), f"the analysis child {pid} outlived its cancelled job"
    assert live_children() == []
    spare = spare_pid()  # started as this analysis took its child, for the next one
    assert spare is not None and spare != pid and Path(f"/proc/{spare}").exists()
    _assert_serving(server.port)


def test_a_killed_child_fails_its_job_with_why(
    client: Client, server: RunningServer, files: dict[str, Path]
) -> None:
    job_id, pid, stream = _running_child(client, _program(files["program"]))
    os.kill(pid, signal.SIGKILL)
    states = [event.status.state for event in stream]
    assert states[-1] == common_pb2.JOB_STATE_FAILED
    error = client.get_analysis(job_id).status.error
    assert "killed by signal SIGKILL" in error and "BITMESH_ANALYSIS_MEMORY_BYTES=" in error
    assert live_children() == []
    _assert_serving(server.port)


def test_stopping_the_service_kills_its_analysis_children(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    running = start_service("sensitivity", build, make_settings(tmp_path), port=0)
    try:
        address = {"sensitivity": f"127.0.0.1:{running.port}"}
        with Client(make_settings(tmp_path), addresses=address, timeout=DEADLINE_S) as client:
            _, pid, _ = _running_child(client, _program(files["program"]))
            spare = spare_pid()
    finally:
        running.stop(0)  # the runner cancels what still runs, then the spare is let go
    assert spare is not None
    assert _gone(pid), f"the analysis child {pid} outlived its service"
    assert _gone(spare), f"the spare child {spare} outlived its service"
    assert live_children() == [] and spare_pid() is None
