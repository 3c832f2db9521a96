"""One runner per job: a lease with a time-to-live, renewed while the job runs.

Every service whose jobs can outlive a process holds one per running job:
the trainer's workers (Celery tasks), and the sensitivity and proxy NAS
services for the work they run in their own threads (``bitmesh.jobs.sweeper``
renews those and finds the jobs whose lease lapsed: their runner died).

Redelivery (a worker lost, a visibility timeout) can hand the same job to a
second worker while the first is still alive. The lease makes the second wait
until the first ends (the job is terminal: nothing to do) or dies (its lease
lapses: resume from the checkpoint). Redis with a URL (``SET NX PX`` and
owner-checked scripts), else SQLite beside the job store (one machine).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bitmesh.errors import Unavailable
from bitmesh.jobs.plumbing import TRAINER, redis_prefix
from bitmesh.jobs.store import thread_connection

# Renew our lease, or take it back when it lapsed and nobody took it
# meanwhile (a Redis outage longer than the TTL must not cost a live runner
# its job); 0 only when another owner holds it.
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """Another runner took this job's lease (ours lapsed unrenewed, e.g. in a
    Redis outage longer than its TTL). That runner goes on from the
    checkpoint; this one stops without writing anything, so the job still
    ends once. Not a :class:`~bitmesh.errors.BitmeshError`: it is no failure
    of the job, and ``execute_job`` records nothing for it."""


class Lease(Protocol):
    def acquire(self, job_id: str, owner: str, ttl: float) -> bool: ...
    def renew(self, job_id: str, owner: str, ttl: float) -> bool: ...
    def release(self, job_id: str, owner: str) -> None: ...


class RedisLease:
    def __init__(self, url: str, prefix: str = TRAINER.redis_prefix) -> None:
        import redis

        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix = prefix

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def acquire(self, job_id: str, owner: str, ttl: float) -> bool:
        try:
            return bool(self.client.set(self._key(job_id), owner, nx=True, px=int(ttl * 1000)))
        except self._errors as exc:
            raise Unavailable(f"Redis is not reachable: {exc}") from exc

    def renew(self, job_id: str, owner: str, ttl: float) -> bool:
        """True while ``owner`` holds the lease (taken back if it lapsed unheld);
        False once another owner took it. Raises Unavailable when Redis is not
        reachable: the caller cannot know, and retries at its next beat."""
        try:
            return bool(self.client.eval(_RENEW, 1, self._key(job_id), owner, int(ttl * 1000)))
        except self._errors as exc:
            raise Unavailable(f"Redis is not reachable: {exc}") from exc

    def release(self, job_id: str, owner: str) -> None:
        with contextlib.suppress(*self._errors):  # else it lapses on its own
            self.client.eval(_RELEASE, 1, self._key(job_id), owner)


class SqliteLease:
    """Leases in a SQLite file: safe across the processes of one machine.

    ``clock`` (wall-clock seconds, shared by every process using the file) is
    injectable so tests can step time instead of sleeping through TTLs.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS leases (job_id TEXT PRIMARY KEY, owner TEXT, expires REAL)"
        )

    def _conn(self) -> sqlite3.Connection:
        return thread_connection(self._local, self.path)

    def acquire(self, job_id: str, owner: str, ttl: float) -> bool:
        conn = self._conn()
        now = self.clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT owner, expires FROM leases WHERE job_id=?", (job_id,)
            ).fetchone()
            free = row is None or row[1] < now or row[0] == owner
            if free:
                conn.execute(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (job_id, owner, now + ttl)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return free

    def renew(self, job_id: str, owner: str, ttl: float) -> bool:
        cursor = self._conn().execute(
            "UPDATE leases SET expires=? WHERE job_id=? AND owner=?",
            (self.clock() + ttl, job_id, owner),
        )
        return cursor.rowcount == 1

    def release(self, job_id: str, owner: str) -> None:
        self._conn().execute("DELETE FROM leases WHERE job_id=? AND owner=?", (job_id, owner))


class LocalLease:
    """In-process leases (tests and direct calls of run_job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}

    def acquire(self, job_id: str, owner: str, ttl: float) -> bool:
        with self._lock:
            held = self._held.get(job_id)
            if held is None or held[1] < time.monotonic() or held[0] == owner:
                self._held[job_id] = (owner, time.monotonic() + ttl)
                return True
            return False

    def renew(self, job_id: str, owner: str, ttl: float) -> bool:
        with self._lock:
            if self._held.get(job_id, ("", 0.0))[0] != owner:
                return False
            self._held[job_id] = (owner, time.monotonic() + ttl)
            return True

    def release(self, job_id: str, owner: str) -> None:
        with self._lock:
            if self._held.get(job_id, ("", 0.0))[0] == owner:
                del self._held[job_id]


def open_lease(redis_url: str | None, artifact_root: str, store: str = TRAINER.store) -> Lease:
    """Redis when a URL is configured, else SQLite beside the job store.

    ``store`` is a store name of :mod:`bitmesh.jobs.plumbing`: its leases live
    under that store's Redis prefix (or ``jobs/<store>-leases.sqlite3``)."""
    if redis_url:
        return RedisLease(redis_url, prefix=redis_prefix(store))
    root = artifact_root.removeprefix("file://")
    return SqliteLease(Path(root) / "jobs" / f"{store}-leases.sqlite3")
