"""The trainer service's sweeper: re-send training jobs whose message is gone.

A job's message can be lost between the queue and a runner: a worker
SIGKILLed while it holds the message but before it takes the job's lease
(an idle worker killed as Redis hands it the job), a whole worker killed
mid-job (Redis restores its delivery only after the visibility timeout, two
hours), the embedded queue's fetched file. The job record then sits QUEUED or
RUNNING with no lease, and nothing would run it for hours.

Each trainer service replica runs :class:`Resender` every
``BITMESH_SWEEP_SECONDS``. It re-sends a job when all of these hold
(docs/architecture.md, "The lost-message window", says why):

- the job is not terminal and nobody holds its lease: no runner is alive;
- the trainer queue is empty: no message is waiting (its own included), so
  the workers are idle, not behind a backlog;
- it has been that way long enough: RUNNING for a lease TTL since its last
  write (its runner stopped renewing), QUEUED for
  ``BITMESH_REQUEUE_AFTER_SECONDS`` since it was queued or last re-sent
  (a delivered message takes its lease within seconds).

Re-sending is idempotent (a runner takes the lease and checks the state
first), and every re-send writes the record, which restarts its clock: one
re-send per window, not one per sweep.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from bitmesh.jobs.admission import ADMISSION_SCAN_LIMIT
from bitmesh.jobs.lease import Lease
from bitmesh.jobs.plumbing import TRAINER
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import JobStore
from bitmesh.jobs.sweeper import Periodic

log = logging.getLogger(__name__)


def _is_free(lease: Lease, job_id: str) -> bool:
    probe = f"resend-probe:{uuid.uuid4().hex[:8]}"
    if not lease.acquire(job_id, probe, 1.0):
        return False
    lease.release(job_id, probe)
    return True


def _noting(message: str) -> Callable[[JobRecord], JobRecord]:
    return lambda r: r if r.state.terminal else r.with_changes(message=message)


class Resender:
    """Finds trainer jobs with no runner and no message, and re-sends them."""

    def __init__(
        self,
        store: JobStore,
        lease: Lease,
        enqueue: Callable[[str], None],
        queue_length: Callable[[], int],
        lease_ttl_s: float,
        requeue_after_s: float,
        clock: Callable[[], float] = time.time,
        before_sweep: Callable[[], object] = lambda: None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.enqueue = enqueue
        self.queue_length = queue_length
        self.lease_ttl_s = lease_ttl_s
        self.requeue_after_s = requeue_after_s
        self.clock = clock
        # The embedded queue puts back dead workers' fetched messages first
        # (trainer_svc.celery_app.restore_lost_fetches).
        self.before_sweep = before_sweep
        self._periodic: Periodic | None = None

    def _waited(self, record: JobRecord, now: float) -> bool:
        wait = self.lease_ttl_s if record.state is JobState.RUNNING else self.requeue_after_s
        return now - record.updated >= wait

    def sweep(self) -> list[str]:
        """Re-send what needs it; return the ids re-sent."""
        self.before_sweep()
        now = self.clock()
        candidates = [
            r
            for kind in TRAINER.kinds
            for r in self.store.list(kind, ADMISSION_SCAN_LIMIT)
            if r.kind == kind and not r.state.terminal and self._waited(r, now)
        ]
        if not candidates or self.queue_length() > 0:
            return []
        sent = []
        for record in candidates:
            if not _is_free(self.lease, record.job_id):
                continue
            why = (
                "its worker stopped while running it"
                if record.state is JobState.RUNNING
                else "its message never reached a runner"
            )
            # Write first: the new ``updated`` restarts the clock, so a second
            # sweep (or replica) does not send it again right away.
            self.store.update(record.job_id, _noting(f"re-sent: {why}"))
            log.warning("re-sending job %s: %s", record.job_id, why)
            self.enqueue(record.job_id)
            sent.append(record.job_id)
        return sent

    def start(self, interval_s: float) -> Resender:
        self._periodic = Periodic(interval_s, self.sweep, "trainer-resender").start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        if self._periodic is not None:
            self._periodic.stop()
