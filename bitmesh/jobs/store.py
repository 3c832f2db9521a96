"""Durable job stores: Redis in a cluster, SQLite for the embedded default.

Both keep a record per job and an append-only list of progress events, so a
Watch stream can resume from any index, from any process. A terminal state is
final: a worker finishing after a cancel cannot turn the job back into
SUCCEEDED (the update is a compare-and-set on the stored state).

Retention: once a job is terminal its record and events expire after
``retention_seconds`` (``BITMESH_JOB_RETENTION_SECONDS``, 7 days by default).
Redis expires the keys itself (a TTL set by the update that ended the job);
SQLite stamps the row with when it expires, hides expired rows and deletes
them as it goes. A queued or running job has no expiry, whatever its age.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bitmesh.errors import NotFound, Unavailable
from bitmesh.jobs.plumbing import redis_prefix
from bitmesh.jobs.records import JobRecord, JobState, final_event

JobUpdate = Callable[[JobRecord], JobRecord]
Clock = Callable[[], float]

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0


class JobStore(Protocol):
    def create(self, record: JobRecord) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord: ...
    def update(self, job_id: str, change: JobUpdate) -> JobRecord: ...
    def append_event(self, job_id: str, event: dict[str, Any]) -> None: ...
    def events_since(self, job_id: str, index: int) -> list[dict[str, Any]]: ...
    def list(self, kind: str | None = None, limit: int = 100) -> list[JobRecord]: ...
    def purge_expired(self) -> int: ...


def job_not_found(job_id: str) -> NotFound:
    """The one NOT_FOUND for a job id: every store and the tenant check
    (:mod:`bitmesh.jobs.tenancy`) raise this, so another tenant's job and
    no job at all read alike."""
    return NotFound(f"job {job_id!r} does not exist")


def thread_connection(local: threading.local, path: str) -> sqlite3.Connection:
    """This thread's connection to the SQLite file ``path`` (kept in ``local``):
    autocommit, so each caller opens its own transactions, and a 30 s busy
    wait while another process holds the file's lock."""
    conn: sqlite3.Connection | None = getattr(local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        local.conn = conn
    return conn


def transition(record: JobRecord, **changes: Any) -> JobRecord:
    """Apply ``changes`` unless the job already ended (terminal is final)."""
    if record.state.terminal and "state" in changes:
        return record
    return record.with_changes(**changes)


class SqliteJobStore:
    """Jobs in one SQLite file: safe across the processes of one machine.

    ``clock`` is injectable so a test can move past a retention without waiting."""

    def __init__(
        self,
        path: str | Path,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self.path = str(path)
        self.retention_seconds = retention_seconds
        self.clock = clock
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, kind TEXT, "
                "created REAL, record TEXT)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS events (job_id TEXT, idx INTEGER, event TEXT, "
                "PRIMARY KEY (job_id, idx))"
            )
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "expires" not in columns:  # a store written before retention existed
                conn.execute("ALTER TABLE jobs ADD COLUMN expires REAL")

    def _conn(self) -> sqlite3.Connection:
        return thread_connection(self._local, self.path)

    def create(self, record: JobRecord) -> JobRecord:
        conn = self._conn()
        conn.execute(
            "INSERT OR IGNORE INTO jobs (job_id, kind, created, record) VALUES (?, ?, ?, ?)",
            (record.job_id, record.kind, record.created, json.dumps(record.to_dict())),
        )
        return self.get(record.job_id)

    def _expiry(self, record: JobRecord) -> float | None:
        return self.clock() + self.retention_seconds if record.state.terminal else None

    def get(self, job_id: str) -> JobRecord:
        row = (
            self._conn()
            .execute(
                "SELECT record FROM jobs WHERE job_id=? AND (expires IS NULL OR expires>?)",
                (job_id, self.clock()),
            )
            .fetchone()
        )
        if row is None:
            raise job_not_found(job_id)
        return JobRecord.from_dict(json.loads(row[0]))

    def update(self, job_id: str, change: JobUpdate) -> JobRecord:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT record, expires FROM jobs WHERE job_id=?", (job_id,)
            ).fetchone()
            if row is None or (row[1] is not None and row[1] <= self.clock()):
                raise job_not_found(job_id)
            old = JobRecord.from_dict(json.loads(row[0]))
            new = change(old)
            # The clock starts when the job ends, not at each later write.
            expires = row[1] if old.state.terminal and new.state.terminal else self._expiry(new)
            conn.execute(
                "UPDATE jobs SET record=?, expires=? WHERE job_id=?",
                (json.dumps(new.to_dict()), expires, job_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    def append_event(self, job_id: str, event: dict[str, Any]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE job_id=?", (job_id,)
            ).fetchone()
            conn.execute("INSERT INTO events VALUES (?, ?, ?)", (job_id, count, json.dumps(event)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def events_since(self, job_id: str, index: int) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT event FROM events WHERE job_id=? AND idx>=? AND job_id NOT IN "
            "(SELECT job_id FROM jobs WHERE expires<=?) ORDER BY idx",
            (job_id, index, self.clock()),
        )
        return [json.loads(r[0]) for r in rows]

    def list(self, kind: str | None = None, limit: int = 100) -> list[JobRecord]:
        self.purge_expired()
        query = "SELECT record FROM jobs"
        args: tuple[Any, ...] = ()
        if kind:
            query += " WHERE kind=?"
            args = (kind,)
        rows = self._conn().execute(query + " ORDER BY created DESC LIMIT ?", (*args, limit))
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    def purge_expired(self) -> int:
        """Delete expired jobs and their events; how many jobs went. A job
        that ended before retention existed gets its expiry now."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self.clock()
            terminal = [state.value for state in JobState if state.terminal]
            conn.execute(
                "UPDATE jobs SET expires=? WHERE expires IS NULL AND "
                f"json_extract(record, '$.state') IN ({','.join('?' * len(terminal))})",
                (now + self.retention_seconds, *terminal),
            )
            conn.execute(
                "DELETE FROM events WHERE job_id IN (SELECT job_id FROM jobs WHERE expires<=?)",
                (now,),
            )
            gone = conn.execute("DELETE FROM jobs WHERE expires<=?", (now,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(gone)


class RedisJobStore:
    """Jobs in Redis: ``bitmesh:job:<id>`` (JSON), ``...:events`` (list).

    A terminal job's two keys get a TTL of ``retention_seconds`` and Redis
    drops them; the index sorted sets lose the id when a read or
    :meth:`purge_expired` finds the record gone."""

    def __init__(
        self,
        url: str,
        prefix: str = "bitmesh",
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        import redis

        self._redis_module = redis
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix = prefix
        self.retention_ms = max(1, round(retention_seconds * 1000))

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _guard(self, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except (
            self._redis_module.exceptions.ConnectionError,
            self._redis_module.exceptions.TimeoutError,
        ) as exc:
            raise Unavailable(f"Redis is not reachable: {exc}") from exc

    def create(self, record: JobRecord) -> JobRecord:
        def run() -> None:
            pipe = self.client.pipeline()
            pipe.set(self._key(record.job_id), json.dumps(record.to_dict()), nx=True)
            pipe.zadd(f"{self.prefix}:jobs", {record.job_id: record.created})
            pipe.zadd(f"{self.prefix}:jobs:{record.kind}", {record.job_id: record.created})
            pipe.execute()

        self._guard(run)
        return self.get(record.job_id)

    def get(self, job_id: str) -> JobRecord:
        raw = self._guard(lambda: self.client.get(self._key(job_id)))
        if raw is None:
            raise job_not_found(job_id)
        return JobRecord.from_dict(json.loads(raw))

    def update(self, job_id: str, change: JobUpdate) -> JobRecord:
        key = self._key(job_id)

        def run() -> JobRecord:
            while True:
                with self.client.pipeline() as pipe:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if raw is None:
                            raise job_not_found(job_id)
                        old = JobRecord.from_dict(json.loads(raw))
                        new = change(old)
                        ttl = int(pipe.pttl(key))
                        pipe.multi()
                        if new.state.terminal:
                            # The clock starts when the job ends, not at each later write.
                            keep = ttl if old.state.terminal and ttl > 0 else self.retention_ms
                            pipe.set(key, json.dumps(new.to_dict()), px=keep)
                            pipe.pexpire(f"{key}:events", keep)
                        else:
                            pipe.set(key, json.dumps(new.to_dict()))
                        pipe.execute()
                        return new
                    except self._redis_module.WatchError:
                        continue

        result: JobRecord = self._guard(run)
        return result

    def append_event(self, job_id: str, event: dict[str, Any]) -> None:
        key = self._key(job_id)

        def run() -> None:
            pipe = self.client.pipeline()
            pipe.rpush(f"{key}:events", json.dumps(event))
            pipe.pttl(key)
            _, ttl = pipe.execute()
            if int(ttl) > 0:  # the job already ended: its events go with its record
                self.client.pexpire(f"{key}:events", int(ttl))

        self._guard(run)

    def events_since(self, job_id: str, index: int) -> list[dict[str, Any]]:
        raw = self._guard(lambda: self.client.lrange(f"{self._key(job_id)}:events", index, -1))
        return [json.loads(r) for r in raw]

    def list(self, kind: str | None = None, limit: int = 100) -> list[JobRecord]:
        index = f"{self.prefix}:jobs:{kind}" if kind else f"{self.prefix}:jobs"
        ids = self._guard(lambda: self.client.zrevrange(index, 0, limit - 1))
        records = []
        for raw_id in ids:
            try:
                records.append(self.get(raw_id.decode()))
            except NotFound:
                self._guard(functools.partial(self.client.zrem, index, raw_id))
        return records

    def purge_expired(self) -> int:
        """Drop from every index the ids of jobs Redis has expired; how many
        entries went (the records and events expired on their own). A job
        that ended before retention existed (no TTL) gets its TTL now."""
        gone = 0
        indexes = self._guard(
            lambda: list(self.client.scan_iter(match=f"{self.prefix}:jobs*", _type="ZSET"))
        )
        for index in indexes:
            members = [
                m for m, _ in self._guard(functools.partial(list, self.client.zscan_iter(index)))
            ]
            for start in range(0, len(members), 500):
                batch = members[start : start + 500]
                pipe = self.client.pipeline(transaction=False)
                for member in batch:
                    pipe.pttl(self._key(member.decode()))
                ttls = self._guard(pipe.execute)
                dead = [m for m, ttl in zip(batch, ttls, strict=True) if ttl == -2]
                if dead:
                    gone += int(self._guard(functools.partial(self.client.zrem, index, *dead)))
                for member, ttl in zip(batch, ttls, strict=True):
                    if ttl == -1:
                        self._expire_if_ended(member.decode())
        return gone

    def _expire_if_ended(self, job_id: str) -> None:
        """Start the retention clock of a job that ended without one."""
        try:
            record = self.get(job_id)
        except NotFound:
            return
        if record.state.terminal:
            key = self._key(job_id)
            pipe = self.client.pipeline()
            pipe.pexpire(key, self.retention_ms)
            pipe.pexpire(f"{key}:events", self.retention_ms)
            self._guard(pipe.execute)


def open_job_store(
    redis_url: str | None,
    artifact_root: str,
    service: str,
    retention_seconds: float | None = None,
) -> JobStore:
    """Redis when a URL is configured, else SQLite beside the artifacts.

    ``service`` is a store name of :mod:`bitmesh.jobs.plumbing` (``TRAINER.store``...).
    ``retention_seconds`` defaults to ``BITMESH_JOB_RETENTION_SECONDS``."""
    if retention_seconds is None:
        from bitmesh.settings import load_settings

        retention_seconds = load_settings().job_retention_seconds
    if redis_url:
        return RedisJobStore(
            redis_url, prefix=redis_prefix(service), retention_seconds=retention_seconds
        )
    local_root = artifact_root.removeprefix("file://")
    return SqliteJobStore(
        Path(local_root) / "jobs" / f"{service}.sqlite3", retention_seconds=retention_seconds
    )


def request_cancel(
    store: JobStore, job_id: str, guard: Callable[[JobRecord], None] | None = None
) -> JobRecord:
    """Mark a job for cancellation; a queued one is cancelled at once, with
    its final event (no runner will write one: it never starts). ``guard``
    sees the record inside the compare-and-set and may raise to refuse
    (the tenant check: nothing of another tenant's record is written)."""
    ended: list[bool] = []

    def change(record: JobRecord) -> JobRecord:
        ended.clear()  # the compare-and-set may run it again
        if guard is not None:
            guard(record)
        if record.state.terminal:
            return record
        if record.state is JobState.QUEUED:
            ended.append(True)
            return record.with_changes(
                state=JobState.CANCELLED, cancel_requested=True, message="cancelled"
            )
        return record.with_changes(cancel_requested=True, message="cancelling")

    record = store.update(job_id, change)
    if ended:
        store.append_event(job_id, final_event(record))
    return record
