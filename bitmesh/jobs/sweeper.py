"""No orphans: leases on the jobs a service runs in its threads, and a sweeper.

A sensitivity analysis or a proxy search runs in a thread of the service
that accepted it. When that process is SIGKILLed, OOM-killed or evicted, its
record stayed RUNNING for ever, and since admission counts every job that is
not terminal, a few such deaths refused new work for good.

Now the process holds a lease (:mod:`bitmesh.jobs.lease`) on every job it
runs, taken before the record exists and renewed every third of its TTL by
one thread per service (:class:`Sweeper`), which also sweeps: every
``interval_s`` it lists its kinds' open jobs and claims the lease of each
one nobody holds. A claimed job is an orphan (its runner died, or gave it up
in a store outage): the service's ``on_orphan`` resumes it (keeping the
lease) or ends it FAILED with the reason. Replicas sweep alike; the lease
makes exactly one of them claim each orphan.

Exit: the thread is a daemon and ``stop`` only sets an event, never joins:
a sweep blocked on an unreachable Redis must not hold up a SIGTERM (services
have hung on exactly that before).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from bitmesh.errors import Unavailable
from bitmesh.jobs.ending import finish
from bitmesh.jobs.lease import Lease
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import JobStore

log = logging.getLogger(__name__)

#: How many of a kind's newest jobs a sweep reads (as admission counts them).
SWEEP_SCAN_LIMIT = 1000

#: Called with an orphan whose lease this process now holds; returns True
#: when it resumed the job (the lease stays held until the job ends), False
#: when it ended it (the lease is released).
OrphanHandler = Callable[[JobRecord], bool]


def process_owner() -> str:
    """A lease owner naming this process (host, pid) uniquely."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class HeldLeases:
    """The leases one process holds on the jobs it runs in its threads."""

    def __init__(self, lease: Lease, ttl: float, owner: str | None = None) -> None:
        self.lease = lease
        self.ttl = ttl
        self.owner = owner or process_owner()
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._held

    def take(self, job_id: str) -> bool:
        """Hold ``job_id``'s lease if nobody else does (raises Unavailable)."""
        if not self.lease.acquire(job_id, self.owner, self.ttl):
            return False
        with self._lock:
            self._held.add(job_id)
        return True

    def drop(self, job_id: str) -> None:
        """Stop renewing and release (a release that fails lapses on its own)."""
        with self._lock:
            self._held.discard(job_id)
        with contextlib.suppress(Exception):
            self.lease.release(job_id, self.owner)

    def renew_all(self) -> None:
        with self._lock:
            held = sorted(self._held)
        for job_id in held:
            try:
                if not self.lease.renew(job_id, self.owner, self.ttl):
                    log.error("job %s: another process took its lease; no longer renewing", job_id)
                    with self._lock:
                        self._held.discard(job_id)
            except Unavailable:
                return  # the store is down: the next beat tries again


def end_orphan(store: JobStore, record: JobRecord, reason: str) -> JobRecord:
    """End an orphan FAILED with ``reason``, with the final event watchers stop on."""
    return finish(store, record.job_id, state=JobState.FAILED, error=reason, message="failed")


class Sweeper:
    """Renews a service's leases and resumes or ends its orphans (module doc)."""

    def __init__(
        self,
        store: JobStore,
        leases: HeldLeases,
        kinds: Sequence[str],
        on_orphan: OrphanHandler,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.leases = leases
        self.kinds = tuple(kinds)
        self.on_orphan = on_orphan
        self.interval_s = interval_s
        self.clock = clock
        self._next_sweep = 0.0
        self._periodic: Periodic | None = None

    def sweep(self) -> list[str]:
        """Claim and hand over every open job of our kinds nobody holds.

        A record touched less than a lease TTL ago is left for the next sweep:
        its runner may be between creating it and taking its lease."""
        now = self.clock()
        claimed = []
        for kind in self.kinds:
            for record in self.store.list(kind, SWEEP_SCAN_LIMIT):
                if record.kind != kind or record.state.terminal or record.job_id in self.leases:
                    continue
                if now - record.updated < self.leases.ttl or not self.leases.take(record.job_id):
                    continue
                claimed.append(record.job_id)
                log.warning(
                    "job %s was %s with no live runner; handing it over",
                    record.job_id,
                    record.state.value,
                )
                try:
                    resumed = self.on_orphan(record)
                except Exception:
                    log.exception("job %s: could not resume or end the orphan", record.job_id)
                    resumed = False
                if not resumed:
                    self.leases.drop(record.job_id)
        return claimed

    def _beat(self) -> None:
        self.leases.renew_all()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.interval_s
            self.sweep()

    def start(self) -> Sweeper:
        self._next_sweep = 0.0
        beat = max(0.05, min(self.leases.ttl / 3, self.interval_s))
        self._periodic = Periodic(beat, self._beat, "job-sweeper").start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        """Stop renewing and sweeping; returns at once (see module doc)."""
        if self._periodic is not None:
            self._periodic.stop()


class Periodic:
    """``func`` every ``interval_s`` in a daemon thread until ``stop``; an
    exception (Redis down) is logged and the next beat tries again. ``stop``
    never joins: a beat blocked on an unreachable store must not delay exit."""

    def __init__(self, interval_s: float, func: Callable[[], object], name: str) -> None:
        self.interval_s = interval_s
        self.func = func
        self.name = name
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.func()
            except Exception as exc:
                log.warning("%s: %s", self.name, exc)
            self._stop.wait(self.interval_s)

    def start(self) -> Periodic:
        threading.Thread(target=self._loop, name=self.name, daemon=True).start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        self._stop.set()
