"""Admission control for queued work: the per-service cap on open jobs.

The in-process runner (:class:`bitmesh.jobs.runner.ThreadJobRunner`) counts
the jobs it runs. Services whose jobs go through Celery (trainer, proxy NAS)
cannot: their work waits in a broker and runs in other processes. They count
instead the jobs of a kind that are not terminal (queued or running) in the
shared job store, which every replica sees alike, and refuse one more with
RESOURCE_EXHAUSTED and a message saying what to do. A refused job is never
created, so nothing already queued is touched.

``create_admitted`` makes the count-then-create step atomic: under a
process-wide lock, and for a Redis store also under a Redis lock, so that
replicas of a service cannot together overshoot the cap.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from bitmesh.errors import ResourceExhausted, Unavailable
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.store import JobStore

# How many of a kind's newest jobs are read to count the open ones. Open jobs
# are recent (the cap keeps them few), so this bounds the cost of a count
# without missing them in practice.
ADMISSION_SCAN_LIMIT = 1000
LOCK_TIMEOUT_S = 10.0

_locks_guard = threading.Lock()
_locks: dict[tuple[int, str], threading.Lock] = {}


def open_jobs(store: JobStore, kind: str, scan_limit: int = ADMISSION_SCAN_LIMIT) -> int:
    """Jobs of ``kind`` in ``store`` that are queued or running."""
    return sum(1 for r in store.list(kind, scan_limit) if r.kind == kind and not r.state.terminal)


def admit(store: JobStore, kind: str, cap: int) -> int:
    """Check there is room for one more ``kind`` job; return how many are open.

    Raises :class:`ResourceExhausted` when ``cap`` jobs are already queued or
    running. Not atomic with the create that follows: use
    :func:`create_admitted` when two submissions may race.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    count = open_jobs(store, kind)
    if count >= cap:
        raise ResourceExhausted(
            f"{count} {kind} jobs are queued or running, the cap is {cap}; wait for one to "
            "finish or cancel one (BITMESH_MAX_CONCURRENT_JOBS raises the cap)"
        )
    return count


def _process_lock(store: JobStore, kind: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((id(store), kind), threading.Lock())


def _redis_lock(store: JobStore, kind: str) -> Any | None:
    client = getattr(store, "client", None)
    prefix = getattr(store, "prefix", None)
    if client is None or prefix is None or not hasattr(client, "lock"):
        return None
    return client.lock(
        f"{prefix}:admission:{kind}", timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_TIMEOUT_S
    )


def create_admitted(store: JobStore, record: JobRecord, cap: int) -> JobRecord:
    """Create ``record`` if its kind is under ``cap`` (atomically); else refuse."""
    with _process_lock(store, record.kind):
        shared = _redis_lock(store, record.kind)
        if shared is None:
            admit(store, record.kind, cap)
            return store.create(record)
        try:
            acquired = shared.acquire()
        except Exception as exc:  # redis.ConnectionError and friends
            raise Unavailable(f"Redis is not reachable for job admission: {exc}") from exc
        if not acquired:
            raise Unavailable(
                f"could not take the {record.kind} admission lock within {LOCK_TIMEOUT_S:.0f} s; "
                "retry the call"
            )
        try:
            admit(store, record.kind, cap)
            return store.create(record)
        finally:
            # A lock that expired meanwhile is gone either way.
            with contextlib.suppress(Exception):
                shared.release()
