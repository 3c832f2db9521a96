from __future__ import annotations

import threading
import uuid

import pytest

from bitmesh.errors import NotFound, ResourceExhausted
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.runner import JobContext, ThreadJobRunner
from bitmesh.jobs.store import RedisJobStore, SqliteJobStore, request_cancel, transition

pytestmark = pytest.mark.unit


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "jobs.sqlite3")
    return RedisJobStore(redis_url, prefix=f"test:{uuid.uuid4().hex}")


def test_create_get_update_events(store) -> None:
    record = store.create(JobRecord(job_id="j1", kind="k", request={"a": 1}))
    assert record.state is JobState.QUEUED and record.request == {"a": 1}
    store.update("j1", lambda r: transition(r, state=JobState.RUNNING, progress=0.5))
    store.append_event("j1", {"n": 1})
    store.append_event("j1", {"n": 2})
    assert [e["n"] for e in store.events_since("j1", 0)] == [1, 2]
    assert [e["n"] for e in store.events_since("j1", 1)] == [2]
    assert store.get("j1").progress == 0.5
    assert [r.job_id for r in store.list("k")] == ["j1"]


def test_terminal_state_is_final(store) -> None:
    store.create(JobRecord(job_id="j2", kind="k"))
    store.update("j2", lambda r: transition(r, state=JobState.RUNNING))
    request_cancel(store, "j2")
    store.update("j2", lambda r: transition(r, state=JobState.CANCELLED))
    store.update("j2", lambda r: transition(r, state=JobState.SUCCEEDED))
    assert store.get("j2").state is JobState.CANCELLED


def test_cancel_of_queued_job_is_immediate(store) -> None:
    store.create(JobRecord(job_id="j3", kind="k"))
    assert request_cancel(store, "j3").state is JobState.CANCELLED


def test_unknown_job_is_not_found(store) -> None:
    with pytest.raises(NotFound):
        store.get("nope")


def test_runner_records_success_failure_and_cap(tmp_path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runner = ThreadJobRunner(store, "k", max_concurrent=1)
    gate = threading.Event()

    def slow(ctx: JobContext) -> dict:
        while not gate.is_set():
            ctx.raise_if_cancelled()
            gate.wait(0.05)
        ctx.report(0.5, "half")
        return {"ok": True}

    first = runner.submit({}, slow)
    with pytest.raises(ResourceExhausted, match="cap is 1"):
        runner.submit({}, slow)
    gate.set()
    runner.shutdown(5)
    done = store.get(first.job_id)
    assert done.state is JobState.SUCCEEDED and done.result == {"ok": True}
    assert len(store.list("k")) == 1  # the refused job was never created


def test_runner_cancel_and_failure(tmp_path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runner = ThreadJobRunner(store, "k", max_concurrent=2)
    started = threading.Event()

    def forever(ctx: JobContext) -> dict:
        started.set()
        while True:
            ctx.raise_if_cancelled()
            threading.Event().wait(0.02)

    def broken(ctx: JobContext) -> dict:
        raise ValueError("boom")

    job = runner.submit({}, forever)
    started.wait(5)
    runner.cancel(job.job_id)
    bad = runner.submit({}, broken)
    runner.shutdown(5)
    assert store.get(job.job_id).state is JobState.CANCELLED
    failed = store.get(bad.job_id)
    assert failed.state is JobState.FAILED
    assert "boom" not in failed.error and "internal error" in failed.error


def test_runner_caps_each_tenant(tmp_path) -> None:
    """BITMESH_MAX_JOBS_PER_TENANT in the in-process runner (sensitivity): a
    tenant holding its share of the threads is refused, another gets one."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runner = ThreadJobRunner(store, "k", max_concurrent=3, max_per_tenant=1)
    gate = threading.Event()

    def slow(ctx: JobContext) -> dict:
        while not gate.wait(0.02):
            ctx.raise_if_cancelled()
        return {"ok": True}

    try:
        runner.submit({}, slow, tenant="alice")
        with pytest.raises(ResourceExhausted, match="BITMESH_MAX_JOBS_PER_TENANT") as info:
            runner.submit({}, slow, tenant="alice")
        assert "1 of your k jobs are queued or running" in info.value.message
        runner.submit({}, slow, tenant="bob")
    finally:
        gate.set()
        runner.shutdown(5)
    assert sorted(r.tenant for r in store.list("k")) == ["alice", "bob"]
