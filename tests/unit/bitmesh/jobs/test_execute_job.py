"""``execute_job``: every way a job ends is recorded, and its last event says
so in one shape (the sensitivity runner, the proxy NAS coordinator threads
and the trainer's tasks share it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bitmesh.errors import Cancelled, InvalidArgument
from bitmesh.jobs.ending import final_event
from bitmesh.jobs.lease import LeaseLost
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.retry import StoreOutage
from bitmesh.jobs.runner import JobContext, ThreadJobRunner, attempts_cap, execute_job
from bitmesh.jobs.store import SqliteJobStore, request_cancel, transition
from bitmesh.jobs.sweeper import end_orphan

pytestmark = pytest.mark.unit


def _run(
    tmp_path: Path,
    work: Callable[[JobContext], dict[str, Any]],
    stop_reason: Callable[[], str | None] = lambda: None,
    cancel_first: bool = False,
) -> tuple[JobRecord, dict[str, Any]]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="j", kind="k"))
    if cancel_first:
        store.update("j", lambda r: transition(r, state=JobState.RUNNING))
        request_cancel(store, "j")
    execute_job(store, "j", work, threading.Event(), stop_reason=stop_reason, label="search")
    return store.get("j"), store.events_since("j", 0)[-1]


def _cancelled(ctx: JobContext) -> dict[str, Any]:
    raise Cancelled("stop")


def test_success_records_the_result(tmp_path: Path) -> None:
    record, last = _run(tmp_path, lambda ctx: {"answer": 42})
    assert record.state is JobState.SUCCEEDED and record.result == {"answer": 42}
    assert last["state"] == JobState.SUCCEEDED.value and last["progress"] == 1.0


def test_user_error_fails_with_its_message_in_the_last_event(tmp_path: Path) -> None:
    def work(ctx: JobContext) -> dict[str, Any]:
        raise InvalidArgument("batch size must be positive")

    record, last = _run(tmp_path, work)
    assert record.state is JobState.FAILED and record.error == "batch size must be positive"
    assert last["message"] == "batch size must be positive"


def test_internal_error_names_the_job_not_the_trace(tmp_path: Path) -> None:
    def work(ctx: JobContext) -> dict[str, Any]:
        raise ZeroDivisionError("secret detail")

    record, _ = _run(tmp_path, work)
    assert record.state is JobState.FAILED
    assert record.error.startswith("internal error in search j (ZeroDivisionError)")
    assert "secret detail" not in record.error


def test_a_cancel_without_a_stop_reason_is_a_cancel(tmp_path: Path) -> None:
    record, last = _run(tmp_path, _cancelled)
    assert record.state is JobState.CANCELLED and last["state"] == JobState.CANCELLED.value


def test_a_service_stop_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    record, last = _run(tmp_path, _cancelled, stop_reason=lambda: "service stopped; start again")
    assert record.state is JobState.FAILED and record.error == "service stopped; start again"
    assert last["message"] == "service stopped; start again"


def test_a_job_cancelled_while_queued_never_runs(tmp_path: Path) -> None:
    ran: list[bool] = []
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="q", kind="k"))
    request_cancel(store, "q")
    execute_job(store, "q", lambda ctx: ran.append(True) or {}, threading.Event())
    assert not ran and store.get("q").state is JobState.CANCELLED
    # The cancel wrote its final event (watchers stop on it); the runner none.
    assert store.events_since("q", 0) == [final_event(store.get("q"))]


def test_a_users_cancel_wins_over_a_service_stop(tmp_path: Path) -> None:
    record, _ = _run(tmp_path, _cancelled, stop_reason=lambda: "stopped", cancel_first=True)
    assert record.state is JobState.CANCELLED


def _user_error(ctx: JobContext) -> dict[str, Any]:
    raise InvalidArgument("batch size must be positive")


def _internal_error(ctx: JobContext) -> dict[str, Any]:
    raise ZeroDivisionError("secret detail")


@pytest.mark.parametrize(
    ("work", "stop_reason", "state"),
    [
        (lambda ctx: {"answer": 42}, None, JobState.SUCCEEDED),
        (_user_error, None, JobState.FAILED),
        (_internal_error, None, JobState.FAILED),
        (_cancelled, None, JobState.CANCELLED),
        (_cancelled, "service stopped", JobState.FAILED),
    ],
    ids=["success", "user-error", "internal-error", "cancel", "service-stop"],
)
def test_every_ending_writes_the_one_final_event_shape(
    tmp_path: Path,
    work: Callable[[JobContext], dict[str, Any]],
    stop_reason: str | None,
    state: JobState,
) -> None:
    record, last = _run(tmp_path, work, stop_reason=lambda: stop_reason)
    assert record.state is state
    assert last == final_event(record)
    assert set(last) == {"state", "progress", "stage", "message", "error"}
    # A failure's line is its reason, in the event and in the record's error.
    if state is JobState.FAILED:
        assert last["message"] == last["error"] == record.error != ""
        assert record.message == "failed"


def test_an_orphan_ended_by_a_sweeper_has_the_same_final_event(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    record = store.create(JobRecord(job_id="o", kind="k", state=JobState.RUNNING))
    ended = end_orphan(store, record, "its service stopped; start it again")
    assert store.events_since("o", 0) == [final_event(ended)]


def test_a_refusal_ends_the_job_failed_before_its_work_runs(tmp_path: Path) -> None:
    ran: list[bool] = []
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="r", kind="k"))
    state = execute_job(
        store,
        "r",
        lambda ctx: ran.append(True) or {},
        threading.Event(),
        admit=lambda record: "ran 5 times without finishing; not retrying",
    )
    record = store.get("r")
    assert state is JobState.FAILED and not ran
    assert record.error == "ran 5 times without finishing; not retrying"
    assert store.events_since("r", 0) == [final_event(record)]


def test_a_job_cancelled_while_its_runner_was_dead_is_not_started_again(tmp_path: Path) -> None:
    ran: list[bool] = []
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="c", kind="k", state=JobState.RUNNING))
    request_cancel(store, "c")  # RUNNING: only flagged; its runner is gone
    state = execute_job(store, "c", lambda ctx: ran.append(True) or {}, threading.Event())
    assert state is JobState.CANCELLED and not ran
    assert store.events_since("c", 0)[-1]["state"] == JobState.CANCELLED.value


def test_the_start_stage_and_the_success_message_are_the_runners(tmp_path: Path) -> None:
    stages: list[str] = []
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="s", kind="k"))

    def work(ctx: JobContext) -> dict[str, Any]:
        stages.append(ctx.store.get("s").stage)
        return {"accuracy": 0.5}

    execute_job(
        store,
        "s",
        work,
        threading.Event(),
        starting="resuming at step 40",
        done_message=lambda result: f"done: accuracy {result['accuracy']}",
    )
    record = store.get("s")
    assert stages == ["resuming at step 40"]
    assert (record.stage, record.message) == ("done", "done: accuracy 0.5")


def test_a_lost_lease_stops_the_job_without_writing(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="l", kind="k"))

    def work(ctx: JobContext) -> dict[str, Any]:
        raise LeaseLost("another runner took it")

    assert execute_job(store, "l", work, threading.Event()) is None
    record = store.get("l")
    assert record.state is JobState.RUNNING and store.events_since("l", 0) == []


def _outage(ctx: JobContext) -> dict[str, Any]:
    raise StoreOutage("the job store was unreachable for 2 s")


def test_a_store_outage_is_left_to_the_sweeper_or_handed_back(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="a", kind="k"))
    store.create(JobRecord(job_id="b", kind="k"))
    # A service thread: nothing recorded, nothing raised; its sweeper takes over.
    assert execute_job(store, "a", _outage, threading.Event()) is None
    assert store.get("a").state is JobState.RUNNING and store.events_since("a", 0) == []
    # A worker: handed back, then the outage propagates (the task retries).
    handed: list[str] = []

    def hand_back() -> bool:
        handed.append("b")
        return True

    with pytest.raises(StoreOutage):
        execute_job(store, "b", _outage, threading.Event(), hand_back=hand_back)
    assert handed == ["b"] and store.events_since("b", 0) == []
    # Nothing to hand back (another runner holds it): it stops quietly.
    assert execute_job(store, "b", _outage, threading.Event(), hand_back=lambda: False) is None


def test_each_start_counts_and_a_job_that_keeps_killing_its_runner_ends_failed(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="oom", kind="k"))
    admit = attempts_cap(2, "BITMESH_JOB_MAX_ATTEMPTS")

    class _Killed(BaseException):
        """The runner dying mid-job: nothing is recorded."""

    def dies(ctx: JobContext) -> dict[str, Any]:
        raise _Killed

    for attempt in (1, 2):  # the first run, then the sweeper's resume
        with pytest.raises(_Killed):
            execute_job(store, "oom", dies, threading.Event(), admit=admit)
        record = store.get("oom")
        assert record.state is JobState.RUNNING and record.attempts == attempt
    ran: list[bool] = []
    state = execute_job(
        store, "oom", lambda ctx: ran.append(True) or {}, threading.Event(), admit=admit
    )
    record = store.get("oom")
    assert state is JobState.FAILED and not ran and record.attempts == 2
    assert record.error.startswith("started 2 times without finishing")
    assert "BITMESH_JOB_MAX_ATTEMPTS" in record.error
    assert store.events_since("oom", 0) == [final_event(record)]


def test_the_thread_runner_caps_the_resumes_of_an_orphan(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord(job_id="k-1", kind="k", state=JobState.RUNNING, attempts=3))
    runner = ThreadJobRunner(store, "k", max_concurrent=1, max_attempts=3)
    ran: list[bool] = []
    runner.resume("k-1", lambda ctx: ran.append(True) or {})
    runner.shutdown(grace=30)
    assert store.get("k-1").state is JobState.FAILED and not ran
