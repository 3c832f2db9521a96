"""The sweeper claims the jobs of dead runners, once, and leaves live ones alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bitmesh.jobs.lease import SqliteLease
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.runner import ThreadJobRunner
from bitmesh.jobs.store import SqliteJobStore
from bitmesh.jobs.sweeper import HeldLeases, Sweeper, end_orphan
from tests.waiting import wait_for

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_only_jobs_nobody_holds_are_claimed_and_each_by_one_sweeper(tmp_path: Path) -> None:
    clock = _Clock()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    lease = SqliteLease(tmp_path / "leases.sqlite3", clock=clock)
    dead = HeldLeases(lease, ttl=30, owner="dead")
    alive = HeldLeases(lease, ttl=30, owner="alive")
    for job_id, holder in (("tune-dead", dead), ("tune-alive", alive)):
        assert holder.take(job_id)
        store.create(JobRecord(job_id=job_id, kind="tune", state=JobState.RUNNING))
    store.create(JobRecord(job_id="tune-done", kind="tune", state=JobState.SUCCEEDED))

    claimed: list[str] = []

    def on_orphan(record: JobRecord) -> bool:
        claimed.append(record.job_id)
        end_orphan(store, record, "its service stopped; start it again")
        return False

    mine = HeldLeases(lease, ttl=30, owner="me")
    other = HeldLeases(lease, ttl=30, owner="other replica")
    first = Sweeper(store, mine, ["tune"], on_orphan, 1.0, clock=clock)
    second = Sweeper(store, other, ["tune"], on_orphan, 1.0, clock=clock)
    assert first.sweep() == [] and second.sweep() == []  # every lease is live

    clock.now += 31  # the dead process renews nothing; the live one does
    alive.renew_all()
    assert first.sweep() == ["tune-dead"]
    assert second.sweep() == []
    assert claimed == ["tune-dead"]
    record = store.get("tune-dead")
    assert record.state is JobState.FAILED and "start it again" in record.error
    assert store.events_since("tune-dead", 0)[-1]["state"] == "failed"
    assert store.get("tune-alive").state is JobState.RUNNING


def test_a_just_created_record_waits_a_lease_ttl_before_it_can_be_claimed(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    leases = HeldLeases(SqliteLease(tmp_path / "leases.sqlite3", clock=clock), ttl=30)
    store.create(JobRecord(job_id="tune-new", kind="tune"))
    sweeper = Sweeper(store, leases, ["tune"], lambda r: False, 1.0, clock=clock)
    assert sweeper.sweep() == []  # its runner may be about to take the lease
    clock.now += 31
    assert sweeper.sweep() == ["tune-new"]


def test_a_thread_runner_holds_a_lease_while_its_job_runs(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    lease = SqliteLease(tmp_path / "leases.sqlite3")
    leases = HeldLeases(lease, ttl=30)
    runner = ThreadJobRunner(store, "sensitivity", 1, leases=leases)
    release = threading.Event()
    record = runner.submit({}, lambda ctx: {"ok": release.wait(30)})
    assert record.job_id in leases
    assert not lease.acquire(record.job_id, "someone else", 30)
    release.set()
    wait_for(lambda: store.get(record.job_id).state is JobState.SUCCEEDED, 30, "the job")
    wait_for(lambda: record.job_id not in leases, 30, "the lease to be dropped")
    assert lease.acquire(record.job_id, "someone else", 30)
    runner.shutdown(1)


def test_stop_returns_at_once_even_while_a_sweep_is_blocked(tmp_path: Path) -> None:
    entered, unblock = threading.Event(), threading.Event()

    class _Stuck(SqliteJobStore):
        def list(self, kind: str | None = None, limit: int = 100) -> list[JobRecord]:
            entered.set()
            unblock.wait(60)
            return []

    leases = HeldLeases(SqliteLease(tmp_path / "leases.sqlite3"), ttl=30)
    sweeper = Sweeper(_Stuck(tmp_path / "jobs.sqlite3"), leases, ["tune"], lambda r: False, 0.1)
    sweeper.start()
    assert entered.wait(30)
    done = threading.Event()
    threading.Thread(target=lambda: (sweeper.stop(10), done.set()), daemon=True).start()
    assert done.wait(5), "stop waited for the blocked sweep"
    unblock.set()
