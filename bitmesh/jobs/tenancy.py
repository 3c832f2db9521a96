"""A tenant sees only its own jobs: the checks every servicer's job calls make.

A record carries its tenant (:attr:`JobRecord.tenant`). Get, Watch and Cancel
of another tenant's job end with exactly the NOT_FOUND a job id that does not
exist gets (:func:`bitmesh.jobs.store.job_not_found`): a caller learns nothing
about other tenants' jobs, not even that an id is taken. List returns only
the caller's jobs.

The stores themselves stay tenant-blind: runners, sweepers and the admission
cap (a pod's memory is shared by every tenant) see every job.
"""

from __future__ import annotations

from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.store import JobStore, job_not_found, request_cancel
from bitmesh.tenants import current_tenant

#: The newest jobs a List reads to find the caller's (bounded like admission's
#: scan: a list is of recent jobs, and retention bounds a store's size).
MAX_LIST_SCAN = 10_000


def owned_job(store: JobStore, job_id: str, tenant: str | None = None) -> JobRecord:
    """The record of ``job_id`` if it is ``tenant``'s (the caller's by default)."""
    record = store.get(job_id)
    if record.tenant != (tenant or current_tenant()):
        raise job_not_found(job_id)
    return record


def cancel_owned(store: JobStore, job_id: str, tenant: str | None = None) -> JobRecord:
    """Ask ``job_id`` to stop, if it is ``tenant``'s; a queued one is cancelled
    at once. The owner is checked inside the store's compare-and-set, so no
    other tenant's record is ever written."""
    owner = tenant or current_tenant()

    def guard(record: JobRecord) -> None:
        if record.tenant != owner:
            raise job_not_found(job_id)

    return request_cancel(store, job_id, guard)


def list_owned(
    store: JobStore, kind: str | None, limit: int, tenant: str | None = None
) -> list[JobRecord]:
    """Up to ``limit`` of ``tenant``'s newest jobs (of ``kind`` when given).

    Reads the store's newest jobs in growing pages until it has ``limit`` of
    the tenant's or the store (or :data:`MAX_LIST_SCAN`) runs out."""
    owner = tenant or current_tenant()
    page = max(limit, 1)
    while True:
        records = store.list(kind, page)
        mine = [r for r in records if r.tenant == owner]
        if len(mine) >= limit or len(records) < page or page >= MAX_LIST_SCAN:
            return mine[:limit]
        page = min(page * 4, MAX_LIST_SCAN)
