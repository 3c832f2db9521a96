"""A request id for every call, in every log line written while it runs.

The id comes from the caller's ``x-request-id`` metadata when it is a short
token of safe characters (so a proxy or another service can thread its own id
through), else a fresh one is made. It is put in the logging context variable
(:func:`bitmesh.logs.current_request_id`) for the whole call and echoed back
in the ``x-request-id`` trailing metadata, so a user who reports a failure can
quote the id that the service's log lines carry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from bitmesh.logs import current_request_id, request_id_scope
from bitmesh.rpc.handlers import WrappingInterceptor, wrap_handler

__all__ = ["REQUEST_ID_KEY", "RequestIdInterceptor", "current_request_id", "request_id_from"]

REQUEST_ID_KEY = "x-request-id"
# Ids from callers end up in log lines: letters, digits and . _ : - only, so a
# caller cannot forge log structure or smuggle control characters in.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    """16 random hex digits (os.urandom: 0.5 us, a third of uuid4().hex[:16])."""
    return os.urandom(8).hex()


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's id when it is safe to log, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SAFE_ID.match(value):
            return value
    return new_request_id()


@contextmanager
def _request_id_around(context: grpc.ServicerContext) -> Iterator[str]:
    request_id = request_id_from(context.invocation_metadata())
    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
    with request_id_scope(request_id):
        yield request_id


class RequestIdInterceptor(WrappingInterceptor):
    """Sets the request id around each call and echoes it to the caller.

    The id is read from the call's own metadata inside the call, so one
    wrapped handler per method serves every call.
    """

    def __init__(self) -> None:
        super().__init__(lambda _method, handler: wrap_handler(handler, _request_id_around))
