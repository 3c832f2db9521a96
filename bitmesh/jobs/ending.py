"""How a job ends: one terminal write, then one final event of one shape.

Why one module: the trainer, the sensitivity runner, the proxy NAS
coordinator and the sweepers each wrote their own last event, with different
keys (the trainer's carried ``error`` and the word "failed" as its message,
the others the error as the message). Watchers stop on the first event whose
state is terminal (``bitmesh.rpc.jobs.watch_events``), so every way a job
ends goes through :func:`finish` (or, for a job cancelled while queued,
:func:`bitmesh.jobs.store.request_cancel`) and every final event is
:func:`final_event` (in :mod:`bitmesh.jobs.records`, which the store can
import): the user's line in ``message`` (the error when it failed), the
error again in ``error``.
"""

from __future__ import annotations

from typing import Any

from bitmesh.jobs.records import JobRecord, final_event
from bitmesh.jobs.store import JobStore, transition

__all__ = ["final_event", "finish"]


def finish(store: JobStore, job_id: str, **changes: Any) -> JobRecord:
    """Apply ``changes`` (a terminal ``state`` among them) and append the final
    event of the record as it is now. A job that had already ended keeps its
    state (terminal is final) and the event says so."""
    record = store.update(job_id, lambda r: transition(r, **changes))
    store.append_event(job_id, final_event(record))
    return record
