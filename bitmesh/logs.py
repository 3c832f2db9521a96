"""Structured log lines (JSON, one per line) for every service.

The request id of the call being served lives in a context variable that the
server's request-id interceptor sets around each call; the formatter adds it
to every line logged while the call runs, so one grep finds a call's story.
The variable lives here (not in the gRPC layer) so that logging stays
importable without grpc.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_REQUEST_ID: ContextVar[str] = ContextVar("bitmesh_request_id", default="")


def current_request_id() -> str:
    """The id of the call being served in this thread ('' outside a call)."""
    return _REQUEST_ID.get()


@contextmanager
def request_id_scope(request_id: str) -> Iterator[str]:
    """Make ``request_id`` current for the duration of the block."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        _REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or _REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str = "INFO", service: str = "") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if service:
        logging.getLogger("bitmesh").info("starting %s", service)
