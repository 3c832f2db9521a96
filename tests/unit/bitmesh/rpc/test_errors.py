"""``bitmesh.rpc.errors``: the one place exceptions become gRPC statuses.

A real gRPC server on loopback with only the error interceptor in front of a
generic test service (bytes in, bytes out), so each case checks exactly what
a caller receives: the status code, the message, and for anything unexpected
INTERNAL with a request id and no trace of the exception's internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from bitmesh.errors import ERRORS_BY_STATUS, BitmeshError
from bitmesh.rpc.errors import ErrorInterceptor, status_code_of

pytestmark = pytest.mark.unit

SERVICE = "bitmesh.test.Errors"
SECRET = "/etc/secret-path-in-the-traceback"


class _Raiser:
    """What the test service raises next (set by each test)."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None
        self.items_before_raising = 0

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self.exception is not None:
            raise self.exception
        return b"ok:" + request

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(self.items_before_raising):
            yield b"item%d" % i
        if self.exception is not None:
            raise self.exception
        yield b"done"

    def aborts(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the servicer itself")
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[_Raiser, grpc.Channel]]:
    raiser = _Raiser()
    identity: Callable[[Any], Any] = lambda b: b  # noqa: E731
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            raiser.unary, request_deserializer=identity, response_serializer=identity
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            raiser.stream, request_deserializer=identity, response_serializer=identity
        ),
        "Aborts": grpc.unary_unary_rpc_method_handler(
            raiser.aborts, request_deserializer=identity, response_serializer=identity
        ),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorInterceptor()]
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield raiser, channel
    finally:
        channel.close()
        server.stop(None)


def _unary(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    return call(b"x", timeout=10, metadata=metadata)  # type: ignore[no-any-return]


def _stream(channel: grpc.Channel) -> list[bytes]:
    call = channel.unary_stream(f"/{SERVICE}/Stream")
    return list(call(b"x", timeout=10))


ALL_ERRORS = sorted(ERRORS_BY_STATUS.values(), key=lambda cls: cls.status_name)


def test_every_error_class_names_a_real_status() -> None:
    for cls in ALL_ERRORS:
        assert status_code_of(cls("m")).name == cls.status_name
    # The base class (and any subclass that forgets its status) is INTERNAL.
    assert status_code_of(BitmeshError("m")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("error_class", ALL_ERRORS, ids=lambda c: c.status_name)
def test_a_domain_error_reaches_the_caller_as_its_status_and_message(
    served: tuple[_Raiser, grpc.Channel], error_class: type[BitmeshError]
) -> None:
    raiser, channel = served
    raiser.exception = error_class(f"fix the {error_class.__name__} thing")
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel)
    assert caught.value.code().name == error_class.status_name
    assert caught.value.details() == f"fix the {error_class.__name__} thing"


@pytest.mark.parametrize("error_class", ALL_ERRORS, ids=lambda c: c.status_name)
def test_a_stream_that_fails_after_some_items_ends_with_the_status(
    served: tuple[_Raiser, grpc.Channel], error_class: type[BitmeshError]
) -> None:
    raiser, channel = served
    raiser.exception = error_class("the stream's reason")
    raiser.items_before_raising = 2
    received: list[bytes] = []
    call = channel.unary_stream(f"/{SERVICE}/Stream")
    with pytest.raises(grpc.RpcError) as caught:
        for item in call(b"x", timeout=10):
            received.append(item)
    assert received == [b"item0", b"item1"]  # what was sent before the error arrives
    assert caught.value.code().name == error_class.status_name
    assert caught.value.details() == "the stream's reason"
    raiser.items_before_raising = 0


@pytest.mark.parametrize("call", [_unary, _stream], ids=["unary", "stream"])
def test_an_unexpected_exception_is_internal_with_a_request_id_and_no_internals(
    served: tuple[_Raiser, grpc.Channel],
    call: Callable[[grpc.Channel], object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    raiser, channel = served
    raiser.exception = KeyError(SECRET)
    with (
        caplog.at_level(logging.ERROR, logger="bitmesh.rpc.errors"),
        pytest.raises(grpc.RpcError) as caught,
    ):
        call(channel)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    details = caught.value.details()
    assert details.startswith("internal error (request id ")
    assert SECRET not in details and "KeyError" not in details and "Traceback" not in details
    request_id = details.split("request id ", 1)[1].split(")", 1)[0]
    assert len(request_id) == 12
    # The service log keeps the traceback under the same id.
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], KeyError)


def test_the_callers_request_id_is_used_and_bounded(served: tuple[_Raiser, grpc.Channel]) -> None:
    raiser, channel = served
    raiser.exception = RuntimeError("boom")
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, metadata=(("x-request-id", "r" * 200),))
    assert caught.value.details() == f"internal error (request id {'r' * 64}); see the service log"


def test_a_servicers_own_abort_and_a_normal_reply_pass_through(
    served: tuple[_Raiser, grpc.Channel],
) -> None:
    raiser, channel = served
    raiser.exception = None
    assert _unary(channel) == b"ok:x"
    assert _stream(channel) == [b"done"]
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Aborts")(b"x", timeout=10)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "aborted by the servicer itself"


def _redis_errors() -> list[BaseException]:
    import kombu.exceptions
    import redis

    return [
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
    ]


@pytest.mark.parametrize("error", _redis_errors(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("call", [_unary, _stream], ids=["unary", "stream"])
def test_an_unwrapped_redis_or_broker_error_is_unavailable_with_a_message(
    served: tuple[_Raiser, grpc.Channel],
    call: Callable[[grpc.Channel], object],
    error: BaseException,
) -> None:
    # Redis down is a retryable condition, not a bug: never INTERNAL.
    raiser, channel = served
    raiser.exception = error
    with pytest.raises(grpc.RpcError) as caught:
        call(channel)
    raiser.exception = None
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Redis is not reachable" in caught.value.details()
    assert "retry" in caught.value.details()
