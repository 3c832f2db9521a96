"""The job pattern's gRPC side, shared by every service: Watch and Cancel.

Watch replays a job's stored events from the start, then follows new ones
until the job ends or the client goes away, so any replica of a service (or a
restarted one) can serve it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import JobStore
from bitmesh.jobs.tenancy import owned_job

T = TypeVar("T")

#: How often a Watch stream looks for new events of its job. Not shorter:
#: 0.05 s (tried 2026-12-04, for the 0.1-0.2 s it saves a pipeline run) made
#: 48 watchers of one analysis poll ~1,000 times a second, and their GIL
#: time starved the sensitivity service's health port past its 1 s deadline
#: in tests/integration/security/test_starvation.py on the loaded machine.
POLL_SECONDS = 0.1


def _is_final(event: dict[str, Any]) -> bool:
    try:
        return JobState(event.get("state", "")).terminal
    except ValueError:
        return False


def watch_events(
    store: JobStore,
    job_id: str,
    context: grpc.ServicerContext,
    to_message: Callable[[JobRecord, dict[str, Any]], T],
) -> Iterator[T]:
    """Yield one message per stored event until the job is terminal.

    Only the caller's tenant's job: another's is NOT_FOUND, as a missing one."""
    record = owned_job(store, job_id)  # NOT_FOUND before the stream starts
    index = 0
    quiet_after_end = 0
    while context.is_active():
        record = store.get(job_id)
        events = store.events_since(job_id, index)
        for event in events:
            yield to_message(record, event)
        index += len(events)
        if record.state.terminal and events and _is_final(events[-1]):
            return  # the runner's last event, written after the final state
        if record.state.terminal and not events:
            # The final event is written just after the final state: wait for
            # it one poll, then end the stream.
            quiet_after_end += 1
            if quiet_after_end >= 2:
                return
        if not events:
            time.sleep(POLL_SECONDS)
