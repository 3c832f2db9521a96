"""Ride out a job store outage: retry a running job's store calls for a while.

Why: a Redis restart (seconds, with AOF) used to fail the running job's next
store write and leave its record RUNNING with nothing running it. A job that
is working has no reason to stop because its progress cannot be written for
a few seconds, so every store call of a running job goes through
:class:`RetryingStore`: it retries with exponential backoff for a bounded
window (``BITMESH_STORE_RETRY_SECONDS``, default 120 s) and the job goes on
where it was. Past the window it raises :class:`StoreOutage`, which runners
treat apart from the job's own failures: the job is not recorded as failed
(it did not fail, and the store could not say so anyway); its runner gives
it back (the trainer's task is retried; a service thread lets its lease
lapse) and it resumes from its checkpoint once the store is back.

Writes are safe to repeat: ``update`` re-reads and re-applies its change
under compare-and-set, and a terminal state is final, so a write whose
answer was lost mid-outage cannot end a job twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bitmesh.errors import Unavailable
from bitmesh.jobs.lease import Lease
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.store import JobStore, JobUpdate

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreOutage(Unavailable):
    """The job store stayed unreachable for a whole retry window."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long (``window_s``) and how often to retry an unreachable store:
    the first wait is ``first_s``, each next one doubles, up to ``max_s``."""

    window_s: float = 120.0
    first_s: float = 0.1
    max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ValueError(
                f"the store retry window must be >= 0 s, got {self.window_s} "
                "(BITMESH_STORE_RETRY_SECONDS)"
            )
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"need 0 < first_s <= max_s, got {self.first_s} and {self.max_s}")

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        from bitmesh.settings import load_settings

        return cls(window_s=load_settings().store_retry_seconds)


def call_with_retry(
    func: Callable[[], T],
    policy: RetryPolicy,
    what: str = "the job store",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``func()``, retried while it raises :class:`Unavailable`, for at most
    ``policy.window_s``; then :class:`StoreOutage`."""
    deadline = clock() + policy.window_s
    delay = policy.first_s
    warned = False
    while True:
        try:
            return func()
        except Unavailable as exc:
            left = deadline - clock()
            if left <= 0:
                raise StoreOutage(
                    f"{what} was unreachable for {policy.window_s:.0f} s ({exc.message}); "
                    "the job resumes from its checkpoint once it is back"
                ) from exc
            if not warned:
                log.warning("%s is unreachable (%s); retrying for %.0f s", what, exc, left)
                warned = True
            sleep(min(delay, left))
            delay = min(delay * 2, policy.max_s)


class RetryingStore:
    """A :class:`JobStore` whose every call rides out an outage (see module doc).

    Other attributes (a Redis store's ``client`` and ``prefix``, which
    admission's lock reads) are the wrapped store's."""

    def __init__(self, store: JobStore, policy: RetryPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or RetryPolicy.from_settings()

    def _retry(self, func: Callable[[], T]) -> T:
        return call_with_retry(func, self.policy)

    def create(self, record: JobRecord) -> JobRecord:
        return self._retry(lambda: self.store.create(record))

    def get(self, job_id: str) -> JobRecord:
        return self._retry(lambda: self.store.get(job_id))

    def update(self, job_id: str, change: JobUpdate) -> JobRecord:
        return self._retry(lambda: self.store.update(job_id, change))

    def append_event(self, job_id: str, event: dict[str, Any]) -> None:
        self._retry(lambda: self.store.append_event(job_id, event))

    def events_since(self, job_id: str, index: int) -> list[dict[str, Any]]:
        return self._retry(lambda: self.store.events_since(job_id, index))

    def list(self, kind: str | None = None, limit: int = 100) -> list[JobRecord]:
        return self._retry(lambda: self.store.list(kind, limit))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class RetryingLease:
    """A :class:`~bitmesh.jobs.lease.Lease` whose ``acquire`` rides out an
    outage like the store's calls. ``renew`` is not retried (a keepalive beat
    is, at the next beat) and ``release`` never fails (a lease not released
    lapses on its own)."""

    def __init__(self, lease: Lease, policy: RetryPolicy | None = None) -> None:
        self.lease = lease
        self.policy = policy or RetryPolicy.from_settings()

    def acquire(self, job_id: str, owner: str, ttl: float) -> bool:
        return call_with_retry(lambda: self.lease.acquire(job_id, owner, ttl), self.policy)

    def renew(self, job_id: str, owner: str, ttl: float) -> bool:
        return self.lease.renew(job_id, owner, ttl)

    def release(self, job_id: str, owner: str) -> None:
        self.lease.release(job_id, owner)
