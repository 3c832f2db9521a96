"""The cap on open jobs for queued (Celery) work: bitmesh.jobs.admission."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bitmesh.errors import ResourceExhausted
from bitmesh.jobs.admission import admit, create_admitted, open_jobs
from bitmesh.jobs.records import JobRecord, JobState, new_job_id
from bitmesh.jobs.store import SqliteJobStore, request_cancel, transition

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "jobs.sqlite3")


def _add(store: SqliteJobStore, kind: str, state: JobState) -> str:
    job_id = new_job_id(kind)
    store.create(JobRecord(job_id=job_id, kind=kind))
    store.update(job_id, lambda r: transition(r, state=state))
    return job_id


def test_counts_only_open_jobs_of_the_kind(store: SqliteJobStore) -> None:
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.CANCELLED):
        _add(store, "training", state)
    _add(store, "search", JobState.QUEUED)
    assert open_jobs(store, "training") == 2
    assert admit(store, "training", 3) == 2


def test_refuses_at_the_cap_with_a_message(store: SqliteJobStore) -> None:
    first = _add(store, "training", JobState.QUEUED)
    _add(store, "training", JobState.RUNNING)
    with pytest.raises(ResourceExhausted) as info:
        admit(store, "training", 2)
    assert "2 training jobs are queued or running, the cap is 2" in info.value.message
    assert "BITMESH_MAX_CONCURRENT_JOBS" in info.value.message
    request_cancel(store, first)  # a queued job cancelled at once frees a place
    assert admit(store, "training", 2) == 1


def test_bad_cap_is_a_programming_error(store: SqliteJobStore) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        admit(store, "training", 0)


def test_create_admitted_never_overshoots(store: SqliteJobStore) -> None:
    cap, callers = 3, 12
    barrier = threading.Barrier(callers)
    outcomes: list[str] = []

    def submit() -> None:
        barrier.wait()
        try:
            create_admitted(store, JobRecord(job_id=new_job_id("training"), kind="training"), cap)
            outcomes.append("ok")
        except ResourceExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == cap and outcomes.count("refused") == callers - cap
    assert len(store.list("training")) == cap


def _add_for(store: SqliteJobStore, tenant: str) -> str:
    job_id = new_job_id("training")
    store.create(JobRecord(job_id=job_id, kind="training", tenant=tenant))
    return job_id


def test_a_tenant_at_its_cap_is_refused_while_another_gets_in(store: SqliteJobStore) -> None:
    for _ in range(2):
        _add_for(store, "alice")
    with pytest.raises(ResourceExhausted) as info:
        create_admitted(
            store, JobRecord(job_id=new_job_id("training"), kind="training", tenant="alice"), 4, 2
        )
    assert "2 of your training jobs are queued or running" in info.value.message
    assert "BITMESH_MAX_JOBS_PER_TENANT" in info.value.message
    assert open_jobs(store, "training", tenant="alice") == 2  # nothing queued
    create_admitted(
        store, JobRecord(job_id=new_job_id("training"), kind="training", tenant="bob"), 4, 2
    )
    assert open_jobs(store, "training", tenant="bob") == 1


def test_the_default_tenant_cap_leaves_one_tenant_as_before(store: SqliteJobStore) -> None:
    """tenant_cap == cap (the setting unset): the global refusal, unchanged."""
    for _ in range(2):
        _add_for(store, "default")
    with pytest.raises(ResourceExhausted) as info:
        admit(store, "training", 2, "default", 2)
    assert "2 training jobs are queued or running, the cap is 2" in info.value.message
    assert "BITMESH_MAX_CONCURRENT_JOBS" in info.value.message


def test_the_tenant_cap_setting_defaults_to_the_global_cap() -> None:
    from bitmesh.settings import Settings

    assert Settings(max_concurrent_jobs=7).tenant_job_cap == 7
    assert Settings(max_concurrent_jobs=7, max_jobs_per_tenant=3).tenant_job_cap == 3
