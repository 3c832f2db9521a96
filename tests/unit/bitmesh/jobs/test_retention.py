"""Retention: a finished job's record and events expire, a running job's never
do, and a finished trainer job's checkpoints are released by `bitmesh gc`."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
import redis

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import NotFound
from bitmesh.gc import collect
from bitmesh.jobs.plumbing import TRAINER
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import RedisJobStore, SqliteJobStore, transition
from tests.waiting import wait_for

pytestmark = pytest.mark.unit


class FakeClock:
    """A clock the test moves by hand (no waiting for a retention to pass)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _finish(store, job_id: str, state: JobState = JobState.SUCCEEDED) -> None:
    store.update(job_id, lambda r: transition(r, state=JobState.RUNNING))
    store.append_event(job_id, {"n": 1})
    store.update(job_id, lambda r: transition(r, state=state, result={"ok": True}))
    store.append_event(job_id, {"state": state.value})  # the final event comes after


def _start(store, job_id: str) -> None:
    store.update(job_id, lambda r: transition(r, state=JobState.RUNNING))
    store.append_event(job_id, {"n": 1})


def test_sqlite_expires_finished_jobs_only(tmp_path) -> None:
    clock = FakeClock()
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, retention_seconds=100, clock=clock)
    for job_id in ("done", "failed", "running", "queued"):
        store.create(JobRecord(job_id=job_id, kind="k", created=clock.now))
    _finish(store, "done")
    _finish(store, "failed", JobState.FAILED)
    _start(store, "running")

    clock.now += 99
    store.update("done", lambda r: transition(r, message="late write"))  # does not renew
    assert store.get("done").state is JobState.SUCCEEDED
    clock.now += 2
    for job_id in ("done", "failed"):
        with pytest.raises(NotFound):
            store.get(job_id)
        assert store.events_since(job_id, 0) == []
    assert store.purge_expired() == 2
    with sqlite3.connect(path) as conn:
        left = {r[0] for r in conn.execute("SELECT job_id FROM jobs")}
        events = {r[0] for r in conn.execute("SELECT job_id FROM events")}
    assert left == {"running", "queued"} and events == {"running"}

    clock.now += 10**9  # however old, a job that has not ended stays
    assert store.get("running").state is JobState.RUNNING
    assert {r.job_id for r in store.list("k")} == {"running", "queued"}


def test_sqlite_store_written_before_retention_gains_the_column(tmp_path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, kind TEXT, created REAL, record TEXT)"
        )
    clock = FakeClock()
    store = SqliteJobStore(path, retention_seconds=1, clock=clock)
    store.create(JobRecord(job_id="j", kind="k"))
    _finish(store, "j")
    clock.now += 2
    with pytest.raises(NotFound):
        store.get("j")


def test_redis_expires_finished_jobs_keys_and_keeps_running_ones(redis_url) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    store = RedisJobStore(redis_url, prefix=prefix, retention_seconds=0.5)
    client = redis.Redis.from_url(redis_url)
    for job_id in ("done", "running"):
        store.create(JobRecord(job_id=job_id, kind="k"))
    _finish(store, "done")
    _start(store, "running")
    done_keys = [f"{prefix}:job:done", f"{prefix}:job:done:events"]
    assert all(client.pttl(k) > 0 for k in done_keys), "a finished job's keys carry a TTL"

    wait_for(lambda: client.exists(*done_keys) == 0, 10, "the finished job's keys to expire")
    with pytest.raises(NotFound):
        store.get("done")
    assert client.pttl(f"{prefix}:job:running") == -1
    assert client.pttl(f"{prefix}:job:running:events") == -1
    assert store.get("running").state is JobState.RUNNING
    assert store.purge_expired() == 2  # "done" in the all-jobs and the kind index
    assert client.zrange(f"{prefix}:jobs", 0, -1) == [b"running"]
    assert client.zrange(f"{prefix}:jobs:k", 0, -1) == [b"running"]


def test_finished_trainer_jobs_checkpoints_are_removed(tmp_path) -> None:
    checkpoints = pytest.importorskip("trainer_svc.checkpoints")
    import torch

    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    store = SqliteJobStore(tmp_path / "trainer.sqlite3")
    for job_id in ("qat-done", "qat-running"):
        store.create(JobRecord(job_id=job_id, kind="qat"))
    blobs: dict[str, list[str]] = {"qat-done": [], "qat-running": []}
    for step in (1, 2):
        for job_id in blobs:
            state = {"step": step, "w": torch.full((4,), float(step)), "job": job_id}
            blobs[job_id].append(checkpoints.save(artifacts, job_id, state, step).sha256)
    _finish(store, "qat-done")
    _start(store, "qat-running")

    report = collect(artifacts, {TRAINER.store: store}, min_age_seconds=0)

    assert report.checkpoints_released == 1
    assert checkpoints.latest(artifacts, "qat-done") is None
    for sha in blobs["qat-done"]:
        with pytest.raises(NotFound):
            artifacts.get_bytes(sha)
    latest = checkpoints.latest(artifacts, "qat-running")
    assert latest is not None and latest["sha256"] == blobs["qat-running"][-1]
    assert checkpoints.load(artifacts, "qat-running")["step"] == 2
    # The running job's superseded checkpoint is unreferenced: collected too.
    with pytest.raises(NotFound):
        artifacts.get_bytes(blobs["qat-running"][0])


def test_jobs_that_ended_before_retention_existed_get_an_expiry(tmp_path, redis_url) -> None:
    """A store written by an older release holds finished jobs with no expiry;
    a purge (what `bitmesh gc` runs) starts their clock, and only theirs."""
    import json

    clock = FakeClock()
    path = tmp_path / "jobs.sqlite3"
    sqlite_store = SqliteJobStore(path, retention_seconds=100, clock=clock)
    for job_id, state in (("old-done", JobState.SUCCEEDED), ("old-running", JobState.RUNNING)):
        record = JobRecord(job_id=job_id, kind="k", state=state)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, kind, created, record) VALUES (?, ?, ?, ?)",
                (job_id, "k", record.created, json.dumps(record.to_dict())),
            )
    sqlite_store.purge_expired()
    clock.now += 101
    sqlite_store.purge_expired()
    with pytest.raises(NotFound):
        sqlite_store.get("old-done")
    assert sqlite_store.get("old-running").state is JobState.RUNNING

    prefix = f"test:{uuid.uuid4().hex}"
    redis_store = RedisJobStore(redis_url, prefix=prefix, retention_seconds=60)
    client = redis.Redis.from_url(redis_url)
    for job_id, state in (("old-done", JobState.SUCCEEDED), ("old-running", JobState.RUNNING)):
        record = JobRecord(job_id=job_id, kind="k", state=state)
        client.set(f"{prefix}:job:{job_id}", json.dumps(record.to_dict()))
        client.rpush(f"{prefix}:job:{job_id}:events", "{}")
        client.zadd(f"{prefix}:jobs", {job_id: record.created})
    assert redis_store.purge_expired() == 0
    assert 0 < client.pttl(f"{prefix}:job:old-done") <= 60_000
    assert 0 < client.pttl(f"{prefix}:job:old-done:events") <= 60_000
    assert client.pttl(f"{prefix}:job:old-running") == -1
