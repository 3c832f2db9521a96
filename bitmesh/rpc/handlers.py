"""Wrap any gRPC method handler in a context manager (all four call shapes).

The server's cross-cutting interceptors (request ids, metrics) need to run
code *around* a call in the thread that serves it: gRPC runs
``intercept_service`` on its polling thread, so a context variable set there
would not be seen by the servicer. Wrapping the handler's behaviour instead
keeps the scope exactly as long as the call, including the whole life of a
response stream.
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


def split_method(full_method: str) -> tuple[str, str]:
    """('/pkg.Service/Method') -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method
