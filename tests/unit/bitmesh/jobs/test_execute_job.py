"""``execute_job``: every way a job ends is recorded, and its last event says
so (the sensitivity runner and the proxy NAS coordinator threads share it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bitmesh.errors import Cancelled, InvalidArgument
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.runner import JobContext, execute_job
from bitmesh.jobs.store import SqliteJobStore, request_cancel, transition

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


def test_a_users_cancel_wins_over_a_service_stop(tmp_path: Path) -> None:
    record, _ = _run(tmp_path, _cancelled, stop_reason=lambda: "stopped", cancel_first=True)
    assert record.state is JobState.CANCELLED
