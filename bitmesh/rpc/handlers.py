"""Wrap any gRPC method handler in a context manager (all four call shapes).

The server's cross-cutting interceptors (request ids, metrics) need to run
code *around* a call in the thread that serves it: gRPC runs
``intercept_service`` on its polling thread, so a context variable set there
would not be seen by the servicer. Wrapping the handler's behaviour instead
keeps the scope exactly as long as the call, including the whole life of a
response stream.

Wrapped handlers are built once per method (:class:`WrappedHandlers`), not
per call: wrapping per call cost a closure, a context manager and a new
handler per interceptor on gRPC's single polling thread, which every call
passes through; per-call data (the request id, the call's context) is read in
the wrapper from the call's own context instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc

# Given the call's context, a context manager entered around the whole call.
Around = Callable[[grpc.ServicerContext], AbstractContextManager[Any]]
Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def _unary_response(behaviour: Behaviour, around: Around) -> Behaviour:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        with around(context):
            return behaviour(request, context)

    return handler


def _stream_response(behaviour: Behaviour, around: Around) -> Behaviour:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with around(context):
            yield from behaviour(request, context)

    return handler


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with ``around(context)`` entered for each call."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_response(handler.unary_unary, around), **codecs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(handler.unary_stream, around), **codecs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, around), **codecs
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream_response(handler.stream_stream, around), **codecs
        )
    return handler


#: Methods whose wrapped handler is kept (a server has a few dozen; names sent
#: by callers for unknown methods must not grow the table without bound).
MAX_CACHED_METHODS = 1024


class WrappedHandlers:
    """Each method's wrapped handler, built on the method's first call.

    ``wrap(method, handler)`` is called again when the handler beneath is not
    the one wrapped before (an inner interceptor that builds a handler per
    call, such as a refusal), so a cached wrapper never outlives its handler.
    Thread-safe without a lock: racing first calls build equal wrappers and
    one of them is kept.
    """

    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._wrap = wrap
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if cached is not None or len(self._by_method) < MAX_CACHED_METHODS:
            self._by_method[method] = (handler, wrapped)
        return wrapped


class WrappingInterceptor(grpc.ServerInterceptor):
    """A server interceptor that wraps each method's handler once
    (:class:`WrappedHandlers`): subclasses only say how to wrap."""

    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._handlers = WrappedHandlers(wrap)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler_call_details.method, handler)  # type: ignore[attr-defined]


def split_method(full_method: str) -> tuple[str, str]:
    """('/pkg.Service/Method') -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method
