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

Fairness between tenants (:mod:`bitmesh.tenants`): the same count, split by
the records' tenant, caps each tenant's open jobs of a kind at
``BITMESH_MAX_JOBS_PER_TENANT`` (by default the global cap, so one tenant
alone is admitted exactly as before tenants). With it below the global cap, a
tenant that filled its share is refused while the others still get in: no
tenant can fill a service's queue and starve the rest. It is counted from the
job store, like the global cap, so it holds across replicas and restarts.
The refusal names the caller's own numbers only, never another tenant's.
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


def _open_records(store: JobStore, kind: str, scan_limit: int) -> list[JobRecord]:
    return [r for r in store.list(kind, scan_limit) if r.kind == kind and not r.state.terminal]


def open_jobs(
    store: JobStore, kind: str, scan_limit: int = ADMISSION_SCAN_LIMIT, tenant: str | None = None
) -> int:
    """Jobs of ``kind`` in ``store`` that are queued or running (``tenant``'s
    only, when given)."""
    records = _open_records(store, kind, scan_limit)
    return sum(1 for r in records if tenant is None or r.tenant == tenant)


def tenant_cap_exhausted(kind: str, count: int, cap: int) -> ResourceExhausted:
    """The refusal of a tenant at its cap: its own numbers and the setting."""
    return ResourceExhausted(
        f"{count} of your {kind} jobs are queued or running, the cap per tenant is {cap}; "
        "wait for one to finish or cancel one (BITMESH_MAX_JOBS_PER_TENANT raises the cap)"
    )


def admit(
    store: JobStore,
    kind: str,
    cap: int,
    tenant: str | None = None,
    tenant_cap: int | None = None,
) -> int:
    """Check there is room for one more ``kind`` job; return how many are open.

    Raises :class:`ResourceExhausted` when ``cap`` jobs are already queued or
    running, or ``tenant_cap`` of ``tenant``'s are (the global cap is checked
    first: with the default ``tenant_cap == cap`` one tenant gets the message
    it got before tenants). Not atomic with the create that follows: use
    :func:`create_admitted` when two submissions may race.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if tenant_cap is not None and tenant_cap < 1:
        raise ValueError(f"tenant_cap must be at least 1, got {tenant_cap}")
    records = _open_records(store, kind, ADMISSION_SCAN_LIMIT)
    count = len(records)
    if count >= cap:
        raise ResourceExhausted(
            f"{count} {kind} jobs are queued or running, the cap is {cap}; wait for one to "
            "finish or cancel one (BITMESH_MAX_CONCURRENT_JOBS raises the cap)"
        )
    if tenant is not None and tenant_cap is not None:
        mine = sum(1 for r in records if r.tenant == tenant)
        if mine >= tenant_cap:
            raise tenant_cap_exhausted(kind, mine, tenant_cap)
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


def create_admitted(
    store: JobStore, record: JobRecord, cap: int, tenant_cap: int | None = None
) -> JobRecord:
    """Create ``record`` if its kind is under ``cap`` and its tenant under
    ``tenant_cap`` (atomically, under the one admission lock); else refuse."""
    with _process_lock(store, record.kind):
        shared = _redis_lock(store, record.kind)
        if shared is None:
            admit(store, record.kind, cap, record.tenant, tenant_cap)
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
            admit(store, record.kind, cap, record.tenant, tenant_cap)
            return store.create(record)
        finally:
            # A lock that expired meanwhile is gone either way.
            with contextlib.suppress(Exception):
                shared.release()
