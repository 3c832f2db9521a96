"""The trainer's resender: a job with no runner and no message is sent again,
once per window; one waiting behind a backlog, or held by a runner, is not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bitmesh.jobs.lease import SqliteLease
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import SqliteJobStore
from trainer_svc.resend import Resender

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _resender(tmp_path: Path, queued: list[int]) -> tuple[Resender, list[str], _Clock]:
    clock = _Clock()
    sent: list[str] = []
    resender = Resender(
        SqliteJobStore(tmp_path / "jobs.sqlite3"),
        SqliteLease(tmp_path / "leases.sqlite3", clock=clock),
        sent.append,
        lambda: queued[0],
        lease_ttl_s=30,
        requeue_after_s=300,
        clock=clock,
    )
    return resender, sent, clock


def test_a_lost_queued_job_is_re_sent_once_per_window(tmp_path: Path) -> None:
    queued = [0]
    resender, sent, clock = _resender(tmp_path, queued)
    resender.store.create(JobRecord(job_id="qat-lost", kind="qat", created=clock.now))
    assert resender.sweep() == []  # just queued: its message may be on its way
    clock.now += 301
    assert resender.sweep() == ["qat-lost"] and sent == ["qat-lost"]
    assert "re-sent" in resender.store.get("qat-lost").message
    # The re-send restarted its clock (the record's ``updated`` is real time
    # now): the next sweeps leave it until another window has passed.
    clock.now = time.time() + 10
    assert resender.sweep() == []


def test_a_job_waiting_behind_a_backlog_is_left_alone(tmp_path: Path) -> None:
    queued = [3]  # messages waiting: the workers are busy, not idle
    resender, sent, clock = _resender(tmp_path, queued)
    resender.store.create(JobRecord(job_id="qat-waiting", kind="qat", created=clock.now))
    clock.now += 3600
    assert resender.sweep() == [] and sent == []
    queued[0] = 0
    assert resender.sweep() == ["qat-waiting"]


def test_a_running_job_is_re_sent_only_once_its_runner_s_lease_lapsed(tmp_path: Path) -> None:
    resender, sent, clock = _resender(tmp_path, [0])
    resender.store.create(
        JobRecord(job_id="qat-run", kind="qat", state=JobState.RUNNING, updated=clock.now)
    )
    assert resender.lease.acquire("qat-run", "worker", 30)
    clock.now += 31
    resender.lease.renew("qat-run", "worker", 30)  # alive: renewing
    assert resender.sweep() == []
    clock.now += 31  # the worker died: no renewals any more
    assert resender.sweep() == ["qat-run"] and sent == ["qat-run"]


def test_finished_jobs_are_never_re_sent(tmp_path: Path) -> None:
    resender, sent, clock = _resender(tmp_path, [0])
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        resender.store.create(
            JobRecord(job_id=f"qat-{state.value}", kind="qat", state=state, updated=clock.now)
        )
    clock.now += 10_000
    assert resender.sweep() == [] and sent == []
