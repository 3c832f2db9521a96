"""Jobs whose worker died while running them (the embedded queue's recovery).

Why its own module: a starting worker asks this before it takes work, and
``trainer_svc.jobs`` imports torch (checkpoints, specs), seconds of CPU that
a worker which never runs a job, or runs one later, should not pay at start.
"""

from __future__ import annotations

import uuid

from bitmesh.jobs.records import JobState
from bitmesh.jobs.store import JobStore
from trainer_svc.lease import Lease


def orphaned_jobs(store: JobStore, lease: Lease, limit: int = 1000) -> list[str]:
    """RUNNING jobs nobody holds the lease of: their worker is gone."""
    probe = f"probe:{uuid.uuid4().hex[:8]}"
    orphans = []
    for record in store.list(None, limit):
        if record.state is JobState.RUNNING and lease.acquire(record.job_id, probe, 1.0):
            lease.release(record.job_id, probe)
            orphans.append(record.job_id)
    return orphans
