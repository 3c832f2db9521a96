"""Bearer tokens and TLS on a real service; health needs neither."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bitmesh.client import Client
from bitmesh.errors import BitmeshError
from bitmesh.logs import JsonFormatter
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, sensitivity_pb2_grpc
from sensitivity_svc.servicer import SERVICE_NAME, build
from tests.integration.security.certs import TlsFiles, make_tls_files
from tests.integration.security.conftest import (
    TOKEN,
    free_port,
    make_settings,
    secure_channel,
)

pytestmark = pytest.mark.integration

HealthResponse = health_pb2.HealthCheckResponse


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("artifacts"),
        auth_token=TOKEN,
        tls_cert_file=str(tls_files.server_cert),
        tls_key_file=str(tls_files.server_key),
        health_port=free_port(),
    )
    running = start_service("sensitivity", build, settings, port=0)
    yield running
    running.stop(1)


@pytest.fixture
def stub(
    server: RunningServer, tls_files: TlsFiles
) -> Iterator[sensitivity_pb2_grpc.SensitivityServiceStub]:
    channel = secure_channel(server.port, tls_files.ca_cert)
    yield sensitivity_pb2_grpc.SensitivityServiceStub(channel)
    channel.close()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return]


def test_no_token_is_unauthenticated(stub: sensitivity_pb2_grpc.SensitivityServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ListAnalyses(common_pb2.ListJobsRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in info.value.details()


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_wrong_token_is_unauthenticated(
    stub: sensitivity_pb2_grpc.SensitivityServiceStub, header: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ListAnalyses(
            common_pb2.ListJobsRequest(), metadata=(("authorization", header),), timeout=5
        )
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_right_token_over_tls_succeeds(
    stub: sensitivity_pb2_grpc.SensitivityServiceStub,
) -> None:
    reply, call = stub.ListAnalyses.with_call(
        common_pb2.ListJobsRequest(),
        metadata=(("authorization", f"Bearer {TOKEN}"), ("x-request-id", "req-42")),
        timeout=5,
    )
    assert list(reply.jobs) == []
    assert ("x-request-id", "req-42") in tuple(call.trailing_metadata())


def test_bitmesh_client_with_token_and_ca(
    server: RunningServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """The shipped client sends the token and trusts the CA from its settings."""
    good = make_settings(tmp_path, auth_token=TOKEN, tls_ca_file=str(tls_files.ca_cert))
    address = {"sensitivity": f"localhost:{server.port}"}
    with Client(good, addresses=address) as client, pytest.raises(BitmeshError) as info:
        client.get_analysis("sensitivity-0000000000000000")
    assert info.value.status_name == "NOT_FOUND"  # authenticated: the servicer answered
    bad = make_settings(tmp_path, auth_token="nope", tls_ca_file=str(tls_files.ca_cert))
    with Client(bad, addresses=address) as client, pytest.raises(BitmeshError) as info:
        client.get_analysis("sensitivity-0000000000000000")
    assert info.value.status_name == "UNAUTHENTICATED"


def test_tls_is_really_on(server: RunningServer, tmp_path: Path) -> None:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    request = common_pb2.ListJobsRequest()
    plain = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = sensitivity_pb2_grpc.SensitivityServiceStub(plain)
    assert _code(lambda: stub.ListAnalyses(request, metadata=metadata, timeout=3)) is (
        grpc.StatusCode.UNAVAILABLE
    )
    plain.close()
    other_ca = make_tls_files(tmp_path / "other", ca_name="someone-else").ca_cert
    untrusted = secure_channel(server.port, other_ca)
    stub = sensitivity_pb2_grpc.SensitivityServiceStub(untrusted)
    assert _code(lambda: stub.ListAnalyses(request, metadata=metadata, timeout=3)) is (
        grpc.StatusCode.UNAVAILABLE
    )
    untrusted.close()


def test_health_needs_no_token(server: RunningServer, tls_files: TlsFiles) -> None:
    channel = secure_channel(server.port, tls_files.ca_cert)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == HealthResponse.SERVING
    channel.close()
    # The kubelet's port: plaintext, health only, per-service status too.
    plain = grpc.insecure_channel(f"127.0.0.1:{server.health_port}")
    health = health_pb2_grpc.HealthStub(plain)
    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert reply.status == HealthResponse.SERVING
    other = sensitivity_pb2_grpc.SensitivityServiceStub(plain)
    with pytest.raises(grpc.RpcError) as info:
        other.ListAnalyses(
            common_pb2.ListJobsRequest(),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=5,
        )
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED  # the API is not on this port
    plain.close()


def _list_services(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
    return [s.name for r in replies for s in r.list_services_response.service]


def test_reflection_needs_the_token(server: RunningServer, tls_files: TlsFiles) -> None:
    channel = secure_channel(server.port, tls_files.ca_cert)
    with pytest.raises(grpc.RpcError) as info:
        _list_services(channel, ())
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert SERVICE_NAME in _list_services(channel, (("authorization", f"Bearer {TOKEN}"),))
    channel.close()


def test_log_lines_carry_the_request_id(
    stub: sensitivity_pb2_grpc.SensitivityServiceStub,
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Collect()
    logger = logging.getLogger("bitmesh.rpc.auth")
    logger.addHandler(handler)
    try:
        with pytest.raises(grpc.RpcError):
            stub.ListAnalyses(
                common_pb2.ListJobsRequest(),
                metadata=(("authorization", "Bearer wrong"), ("x-request-id", "trace-7")),
                timeout=5,
            )
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(x) for x in lines]
    assert line["request_id"] == "trace-7"
    assert "refused" in line["msg"] and "wrong" not in line["msg"]  # the token is never logged


def test_graceful_shutdown_turns_probes_not_serving(tmp_path: Path) -> None:
    running = start_service(
        "sensitivity", build, make_settings(tmp_path, health_port=free_port()), port=0
    )
    plain = grpc.insecure_channel(f"127.0.0.1:{running.health_port}")
    health = health_pb2_grpc.HealthStub(plain)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    assert health.Check(request, timeout=5).status == HealthResponse.SERVING
    running.health.enter_graceful_shutdown()  # what stop() does first
    assert health.Check(request, timeout=5).status == HealthResponse.NOT_SERVING
    running.stop(1)
    with pytest.raises(grpc.RpcError):
        health.Check(request, timeout=2)
    plain.close()


def test_embedded_default_needs_no_token(tmp_path: Path) -> None:
    """Loopback without a token configured: authentication stays off."""
    running = start_service("sensitivity", build, make_settings(tmp_path), port=0)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
        assert list(stub.ListAnalyses(common_pb2.ListJobsRequest(), timeout=5).jobs) == []
        channel.close()
    finally:
        running.stop(1)
