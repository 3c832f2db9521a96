"""Hostile model files through a real sensitivity server (issue 16): each is
refused with a clear status naming the limit or the op, and the service is
still SERVING afterwards.

The program files run in the sandbox child (bitmesh/models/sandbox/), never
in the server's process: a forward that loops for ever is killed at the wall
clock, one that allocates 50 GB is denied by the child's memory rlimit, one
that maps a file is refused by the op check before any of it runs, and a
TorchScript module (here one whose forward never ends) is refused at the
door without being loaded. The limits are lowered for the module so the loop
is killed within seconds; the 50 GB request fails against the default.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.models import model_cache
from bitmesh.models.sandbox import default_sandbox
from bitmesh.models.spec import ModelSpec
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import (
    common_pb2,
    proxy_nas_pb2,
    proxy_nas_pb2_grpc,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from sensitivity_svc.servicer import build
from tests.hostile_models import (
    INPUT_SHAPE,
    NUM_CLASSES,
    READ_TARGET,
    allocating_program,
    file_reading_program,
    looping_program,
    scripted_loop,
    tiny_program,
)
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

#: The wall clock the module runs the sandbox under (a limit, not a timing).
WALL_S = 5
# The tests that kill the child come last in the file: each kill costs a
# restart (a torch import, seconds), so the others share one child.
#: Deadline of every call: the wall clock plus a child restart on a busy machine.
DEADLINE_S = 120.0

INT8 = common_pb2.QuantOption(
    weight=common_pb2.NumericFormat(name="int8"), activation=common_pb2.NumericFormat(name="int8")
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "tiny": tiny_program(root / "tiny.pt2"),
        "loop": looping_program(root / "loop.pt2"),
        "alloc": allocating_program(root / "alloc.pt2"),
        "read": file_reading_program(root / "read.pt2"),
        "scripted": scripted_loop(root / "scripted_loop.pt"),
    }


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningServer]:
    patch = pytest.MonkeyPatch()
    patch.setenv("BITMESH_SANDBOX_WALL_SECONDS", str(WALL_S))
    patch.setenv("BITMESH_AUTH_TOKEN_FOR_THE_CHILD_CHECK", "must-not-leak")
    running = start_service(
        "sensitivity", build, make_settings(tmp_path_factory.mktemp("root")), port=0
    )
    try:
        # Start the child before any call, so no deadline pays its torch import.
        default_sandbox().describe(_spec(files["tiny"]))
        yield running
    finally:
        running.stop(0)
        patch.undo()


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(
        source="exported_program",
        name_or_path=str(path),
        input_shape=INPUT_SHAPE,
        num_classes=NUM_CLASSES,
    )


def _model(path: Path, field: str = "exported_program") -> common_pb2.ModelRef:
    return common_pb2.ModelRef(
        **{field: str(path)}, input_shape=list(INPUT_SHAPE), num_classes=NUM_CLASSES
    )


def _list_layers(port: int, model: common_pb2.ModelRef) -> sensitivity_pb2.ListLayersResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
        return stub.ListLayers(
            sensitivity_pb2.ListLayersRequest(model=model, options=[INT8]), timeout=DEADLINE_S
        )


def _refused(port: int, model: common_pb2.ModelRef) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _list_layers(port, model)
    return caught.value


def _assert_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bitmesh.v1.SensitivityService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_program_is_described_by_the_sandbox_not_the_server(
    server: RunningServer, files: dict[str, Path]
) -> None:
    model_cache.forget_models()
    reply = _list_layers(server.port, _model(files["tiny"]))
    assert [layer.layer.name for layer in reply.layers] == ["fc"]
    assert reply.total_parameters == 4 * 3 + 3 and reply.model_hash
    # The server's own process never loaded it: its model cache is empty.
    assert not any(spec.name_or_path == str(files["tiny"]) for spec, _ in model_cache._loaded)


def test_the_child_has_no_secrets_and_an_empty_folder(
    server: RunningServer, files: dict[str, Path]
) -> None:
    _list_layers(server.port, _model(files["tiny"]))
    process = default_sandbox()._process
    assert process is not None
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert "BITMESH_AUTH_TOKEN_FOR_THE_CHILD_CHECK" in os.environ
    assert not {n for n in names if n.startswith("BITMESH_") and n != "BITMESH_DEVICE"}
    assert "REDIS_URL" not in names
    cwd = Path(os.readlink(f"/proc/{process.pid}/cwd"))
    assert cwd.parent.name.startswith("bitmesh-sandbox-") and list(cwd.iterdir()) == []
    limits = Path(f"/proc/{process.pid}/limits").read_text()
    address_space = next(line for line in limits.splitlines() if "address space" in line)
    assert address_space.split()[3] != "unlimited"


def test_a_50_gb_allocation_is_denied_by_the_memory_cap(
    server: RunningServer, files: dict[str, Path]
) -> None:
    error = _refused(server.port, _model(files["alloc"]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "BITMESH_SANDBOX_MEMORY_BYTES=" in (error.details() or "")
    _assert_serving(server.port)


def test_a_program_reading_a_file_is_refused_without_its_contents(
    server: RunningServer, files: dict[str, Path]
) -> None:
    error = _refused(server.port, _model(files["read"]))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "aten.from_file, which reads files" in details
    assert Path(READ_TARGET).read_text().strip() not in details
    _assert_serving(server.port)


def test_start_analysis_refuses_a_hostile_program_before_queueing(
    server: RunningServer, files: dict[str, Path]
) -> None:
    request = sensitivity_pb2.StartAnalysisRequest(
        model=_model(files["read"]),
        dataset=common_pb2.DatasetRef(
            kind=common_pb2.DATASET_KIND_SYNTHETIC, shape=list(INPUT_SHAPE), num_classes=3
        ),
        options=[INT8],
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartAnalysis(request, timeout=DEADLINE_S)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "aten.from_file" in (caught.value.details() or "")
        listed = stub.ListAnalyses(common_pb2.ListJobsRequest(), timeout=10)
        assert not listed.jobs
    _assert_serving(server.port)


@pytest.fixture(scope="module")
def submitters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    """The trainer and proxy NAS services, which vet a program before their own checks."""
    root = tmp_path_factory.mktemp("submitters")
    started: dict[str, RunningServer] = {}
    try:
        for service in ("trainer", "proxy_nas"):
            module = importlib.import_module(f"{service}_svc.servicer")
            started[service] = start_service(service, module.build, make_settings(root), port=0)
        yield started
    finally:
        for running in started.values():
            running.stop(0)


def _synthetic() -> common_pb2.DatasetRef:
    return common_pb2.DatasetRef(
        kind=common_pb2.DATASET_KIND_SYNTHETIC, shape=list(INPUT_SHAPE), num_classes=NUM_CLASSES
    )


def test_start_job_and_start_search_refuse_a_hostile_program(
    submitters: dict[str, RunningServer], files: dict[str, Path]
) -> None:
    model = _model(files["read"])
    job = trainer_pb2.StartTrainingRequest(model=model, dataset=_synthetic())
    job.calibration.SetInParent()
    search = proxy_nas_pb2.StartSearchRequest(
        model=model,
        dataset=_synthetic(),
        default_option=INT8,
        space=[
            proxy_nas_pb2.Hyperparameter(
                name="learning_rate", categorical=proxy_nas_pb2.Categorical(choices=["0.1"])
            )
        ],
        trials=1,
        fidelity=[proxy_nas_pb2.Rung(data_fraction=1.0, steps=1)],
    )
    calls = {
        "trainer": lambda ch: trainer_pb2_grpc.TrainerServiceStub(ch).StartJob(
            job, timeout=DEADLINE_S
        ),
        "proxy_nas": lambda ch: proxy_nas_pb2_grpc.ProxyNasServiceStub(ch).StartSearch(
            search, timeout=DEADLINE_S
        ),
    }
    for service, call in calls.items():
        port = submitters[service].port
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            call(channel)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, service
        assert "aten.from_file, which reads files" in (caught.value.details() or ""), service
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("field", ["exported_program", "torchscript"])
def test_a_scripted_endless_loop_is_refused_at_the_door(
    server: RunningServer, files: dict[str, Path], field: str
) -> None:
    starts = default_sandbox().starts
    error = _refused(server.port, _model(files["scripted"], field))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TorchScript" in (error.details() or "")
    assert default_sandbox().starts == starts  # refused before anything loads it
    _assert_serving(server.port)


@pytest.mark.parametrize(
    ("wall_s", "cpu_s", "named"),
    [
        (WALL_S, 600, f"BITMESH_SANDBOX_WALL_SECONDS={WALL_S}"),
        (600, 2, "BITMESH_SANDBOX_CPU_SECONDS=2"),
    ],
    ids=["wall-clock", "cpu-time"],
)
def test_an_endless_forward_is_stopped_at_its_limit(
    server: RunningServer,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    wall_s: int,
    cpu_s: int,
    named: str,
) -> None:
    monkeypatch.setenv("BITMESH_SANDBOX_WALL_SECONDS", str(wall_s))
    monkeypatch.setenv("BITMESH_SANDBOX_CPU_SECONDS", str(cpu_s))
    error = _refused(server.port, _model(files["loop"]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert named in (error.details() or "")
    _assert_serving(server.port)
    # The killed child is replaced: the next program is answered.
    assert _list_layers(server.port, _model(files["tiny"])).layers
