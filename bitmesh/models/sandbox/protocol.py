"""The sandbox's wire format: one JSON object per line, replies sanitised.

Requests (service -> child): ``{"spec": {...}, "cpu_seconds": N}``, with
``"weight_errors": [option keys]`` to price the weights too. Replies (child
-> service): ``{"ok": true, "table": {...}}`` (plus ``"weight_errors"``: per
layer, one number per option) or ``{"ok": false, "status": NAME,
"message": TEXT}``; the first line the child writes is ``{"ready": true}``.
A reply is bounded (:data:`MAX_REPLY_BYTES`) and its message is sanitised on
both sides: one line, printable characters, at most :data:`MAX_MESSAGE_CHARS`,
so what a hostile program makes torch say (a file's size, a tensor's values)
cannot fill a caller's error or the service's memory.
"""

from __future__ import annotations

import json
from typing import Any

from bitmesh.errors import (
    BitmeshError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

__all__ = ["MAX_MESSAGE_CHARS", "MAX_REPLY_BYTES", "error_from_reply", "failure", "sanitize"]

#: Longest message a caller gets from the sandbox.
MAX_MESSAGE_CHARS = 400
#: Longest reply line the service reads (a table of 20,000 layers is ~4 MiB).
MAX_REPLY_BYTES = 16 * 1024 * 1024

#: The statuses a child may report; anything else reads as INVALID_ARGUMENT.
_ERRORS: dict[str, type[BitmeshError]] = {
    cls.status_name: cls
    for cls in (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted)
}


def sanitize(text: object) -> str:
    """One printable line of at most MAX_MESSAGE_CHARS characters."""
    line = " ".join(str(text).split())
    line = "".join(ch for ch in line if ch.isprintable())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return line or "no reason given"


def failure(status_name: str, message: str) -> str:
    """A failure reply line."""
    return json.dumps({"ok": False, "status": status_name, "message": sanitize(message)})


def error_from_reply(reply: dict[str, Any]) -> BitmeshError:
    """The domain error a failure reply stands for (its message sanitised again)."""
    cls = _ERRORS.get(str(reply.get("status")), InvalidArgument)
    return cls(sanitize(reply.get("message", "")))
