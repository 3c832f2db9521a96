"""Requests that do not parse end INVALID_ARGUMENT, not INTERNAL.

gRPC parses a request with the handler's ``request_deserializer`` before any
interceptor's code runs, and a parse failure ends the call INTERNAL
"Exception deserializing request!": a status that says the service broke,
for bytes the caller sent. This interceptor, outermost, takes the parsing
over: gRPC hands it the raw bytes and it parses them in the call's thread,
ending a malformed request with INVALID_ARGUMENT naming the message type.
Every interceptor beneath still receives the parsed message (the path guard
relies on it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from bitmesh.rpc.handlers import WrappingInterceptor

__all__ = ["RequestDecodeInterceptor"]

Parse = Callable[[bytes], Any]


def _type_name(parse: Parse) -> str:
    cls = getattr(parse, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _parsed(parse: Parse, raw: bytes, context: grpc.ServicerContext) -> Any:
    try:
        return parse(raw)
    except (DecodeError, ValueError, TypeError, RuntimeError):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {_type_name(parse)} message ({len(raw)} bytes "
            "that do not parse); send it through the generated stubs",
        )


def _wrap(_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler
    serialize = {"response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        def unary_call(raw: bytes, context: grpc.ServicerContext) -> Any:
            return unary(_parsed(parse, raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_call, **serialize)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        def stream_call(raw: bytes, context: grpc.ServicerContext) -> Any:
            request = _parsed(parse, raw, context)
            yield from stream(request, context)

        return grpc.unary_stream_rpc_method_handler(stream_call, **serialize)
    return handler


class RequestDecodeInterceptor(WrappingInterceptor):
    """Parses requests itself (see the module doc); one wrapper per method."""

    def __init__(self) -> None:
        super().__init__(_wrap)
