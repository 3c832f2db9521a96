"""Interceptors wrap each method once, yet every call keeps its own request id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitmesh.errors import NotFound
from bitmesh.logs import current_request_id
from bitmesh.rpc.handlers import WrappedHandlers
from bitmesh.rpc.server import RunningServer, create_server
from bitmesh.settings import Settings

pytestmark = pytest.mark.unit


def _echo_id(request: bytes, context: grpc.ServicerContext) -> bytes:
    return current_request_id().encode()


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise NotFound(f"no such thing (call {current_request_id()})")


def _register(server: grpc.Server) -> None:
    handlers = {
        "Id": grpc.unary_unary_rpc_method_handler(_echo_id),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = create_server(
        "127.0.0.1:0", [_register], ["t.Echo"], Settings(artifact_root=str(tmp_path))
    )
    yield running
    running.stop(0)


def _call(channel: grpc.Channel, method: str, request_id: str | None = None) -> tuple[Any, str]:
    metadata = (("x-request-id", request_id),) if request_id else ()
    reply, call = channel.unary_unary(f"/t.Echo/{method}").with_call(
        b"", metadata=metadata, timeout=10
    )
    trailing = dict(call.trailing_metadata())
    return reply, trailing["x-request-id"]


def test_each_call_has_its_own_request_id(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert _call(channel, "Id", "first-1") == (b"first-1", "first-1")
        assert _call(channel, "Id", "second-2") == (b"second-2", "second-2")
        fresh = [_call(channel, "Id") for _ in range(3)]
        ids = {echoed for _, echoed in fresh}
        assert len(ids) == 3
        for reply, echoed in fresh:
            assert reply.decode() == echoed and len(echoed) == 16
            int(echoed, 16)  # hex digits
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/t.Echo/Missing")(
                b"", metadata=(("x-request-id", "miss-3"),), timeout=10
            )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such thing (call miss-3)"
    assert ("x-request-id", "miss-3") in tuple(failed.value.trailing_metadata())


def test_a_method_is_wrapped_once_and_again_when_its_handler_changes() -> None:
    wrapped: list[str] = []

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append(method)
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary)

    cache = WrappedHandlers(wrap)
    first = grpc.unary_unary_rpc_method_handler(_echo_id)
    one = cache.get("/t.Echo/Id", first)
    assert cache.get("/t.Echo/Id", first) is one
    assert wrapped == ["/t.Echo/Id"]
    other = cache.get("/t.Echo/Id", grpc.unary_unary_rpc_method_handler(_echo_id))
    assert other is not one and wrapped == ["/t.Echo/Id", "/t.Echo/Id"]
