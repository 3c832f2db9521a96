"""One interceptor that turns domain errors into gRPC statuses.

Servicers raise :mod:`bitmesh.errors` exceptions (or let them through from
domain code); this maps them to ``context.abort(code, message)``. Anything
unexpected becomes INTERNAL with a request id and no internals, and is logged
with its traceback under that id.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from bitmesh.errors import BitmeshError, Unavailable
from bitmesh.logs import current_request_id
from bitmesh.rpc.handlers import WrappingInterceptor

log = logging.getLogger(__name__)


def status_code_of(error: BitmeshError) -> grpc.StatusCode:
    code: grpc.StatusCode = getattr(grpc.StatusCode, error.status_name, grpc.StatusCode.INTERNAL)
    return code


def _request_id(context: grpc.ServicerContext) -> str:
    current = current_request_id()
    if current:
        return current
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return value[:64]
    return uuid.uuid4().hex[:12]


def _redis_down(exc: BaseException) -> Unavailable | None:
    """A Redis connection or timeout error that reached the edge unwrapped
    (a lock, a broker call): UNAVAILABLE, which clients retry, not INTERNAL.
    Read from ``sys.modules`` so a service without Redis never imports it."""
    errors: tuple[type[BaseException], ...] = ()
    redis = sys.modules.get("redis")
    if redis is not None:
        errors += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    kombu = sys.modules.get("kombu.exceptions")
    if kombu is not None:  # the broker (the same Redis) refused a message
        errors += (kombu.OperationalError,)
    if errors and isinstance(exc, errors):
        return Unavailable(f"Redis is not reachable ({exc}); retry the call once it is back")
    return None


def abort_for(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    """End the call with ``exc``'s status, or INTERNAL with a request id (logged)."""
    exc = _redis_down(exc) or exc
    if isinstance(exc, BitmeshError):
        context.abort(status_code_of(exc), exc.message)
    rid = _request_id(context)
    log.error("unexpected error in %s (request id %s)", method, rid, exc_info=exc)
    context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (request id {rid}); see the service log"
    )


def _wrap_unary(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            if _is_abort(exc, context):
                raise
            abort_for(context, method, exc)

    return handler


def _wrap_stream(method: str, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except Exception as exc:
            if _is_abort(exc, context):
                raise
            abort_for(context, method, exc)

    return handler


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """Whether ``exc`` is a status already decided, to pass through untouched.

    ``context.abort`` sets the call's code, then raises a bare ``Exception()``
    (grpc 1.76), so it is recognised by the code it left on the context:
    without that check a servicer's own abort became INTERNAL.
    """
    if isinstance(exc, grpc.RpcError) or type(exc).__module__.startswith("grpc"):
        return True
    code = getattr(context, "code", None)
    return type(exc) is Exception and callable(code) and code() is not None


def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(method, handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class ErrorInterceptor(WrappingInterceptor):
    """Maps :class:`BitmeshError` to its status; hides unexpected internals."""

    def __init__(self) -> None:
        super().__init__(_wrap)
