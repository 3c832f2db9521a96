"""Caps on open jobs through real servers: refusals are clean, nothing is lost.

Two kinds of service: one that runs jobs in its own threads
(:class:`ThreadJobRunner`, like sensitivity) and one that queues them for
Celery workers and counts open jobs in the shared store
(:func:`bitmesh.jobs.admission.create_admitted`, for trainer and proxy NAS),
here with two replicas sharing one Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitmesh.errors import ResourceExhausted
from bitmesh.jobs.admission import create_admitted
from bitmesh.jobs.plumbing import PING
from bitmesh.jobs.records import JobRecord, JobState, new_job_id
from bitmesh.jobs.runner import JobContext, ThreadJobRunner
from bitmesh.jobs.store import JobStore, RedisJobStore, SqliteJobStore, request_cancel
from bitmesh.rpc.metrics import broker_queue_length
from bitmesh.rpc.server import RunningServer, create_server
from bitmesh.v1 import (
    common_pb2,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

CAP = 3
CALLERS = 10


class BlockingAnalyses(sensitivity_pb2_grpc.SensitivityServiceServicer):
    """StartAnalysis runs a job in the runner that waits for ``release``."""

    def __init__(self, runner: ThreadJobRunner, release: threading.Event) -> None:
        self.runner = runner
        self.release = release

    def StartAnalysis(self, request: Any, context: grpc.ServicerContext) -> common_pb2.JobRef:
        def work(ctx: JobContext) -> dict[str, Any]:
            while not self.release.wait(0.05):
                ctx.raise_if_cancelled()
            return {"done": True}

        return common_pb2.JobRef(job_id=self.runner.submit({}, work).job_id)


class QueuedTraining(trainer_pb2_grpc.TrainerServiceServicer):
    """StartJob admits a job under the cap and queues a Celery message for it."""

    def __init__(self, store: JobStore, cap: int, send: Callable[[str], None]) -> None:
        self.store, self.cap, self.send = store, cap, send

    def StartJob(self, request: Any, context: grpc.ServicerContext) -> common_pb2.JobRef:
        record = create_admitted(
            self.store, JobRecord(job_id=new_job_id("training"), kind="training"), self.cap
        )
        self.send(record.job_id)
        return common_pb2.JobRef(job_id=record.job_id)


def _submit_all(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[grpc.RpcError]]:
    """Run every call at once; the successes and the failures."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(run, calls))
    return (
        [r for r in results if not isinstance(r, grpc.RpcError)],
        [r for r in results if isinstance(r, grpc.RpcError)],
    )


def _assert_clean_refusals(errors: list[grpc.RpcError], expected: int) -> None:
    assert len(errors) == expected
    for error in errors:
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"the cap is {CAP}" in error.details()
        assert "BITMESH_MAX_CONCURRENT_JOBS" in error.details()


def test_thread_runner_cap(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runner = ThreadJobRunner(store, "sensitivity", CAP)
    release = threading.Event()
    servicer = BlockingAnalyses(runner, release)
    running = create_server(
        "127.0.0.1:0",
        [lambda s: sensitivity_pb2_grpc.add_SensitivityServiceServicer_to_server(servicer, s)],
        ["bitmesh.v1.SensitivityService"],
        make_settings(tmp_path),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
    try:
        start = lambda: stub.StartAnalysis(sensitivity_pb2.StartAnalysisRequest(), timeout=10)  # noqa: E731
        accepted, refused = _submit_all([start] * CALLERS)
        assert len(accepted) == CAP
        _assert_clean_refusals(refused, CALLERS - CAP)
        release.set()
        runner.shutdown(10)
        records = store.list("sensitivity")
        assert {r.job_id for r in records} == {ref.job_id for ref in accepted}
        assert all(r.state is JobState.SUCCEEDED for r in records)
    finally:
        release.set()
        channel.close()
        running.stop(1)


def test_thread_runner_has_room_as_soon_as_a_job_ends(tmp_path: Path) -> None:
    """A client that saw its job end and submits again is never refused."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    runner = ThreadJobRunner(store, "sensitivity", 1)
    refused = 0
    try:
        for _ in range(200):
            try:
                record = runner.submit({}, lambda ctx: {"done": True})
            except ResourceExhausted:
                refused += 1
                continue
            while not store.get(record.job_id).state.terminal:
                pass
    finally:
        runner.shutdown(5)
    assert refused == 0


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisJobStore]:
    store = RedisJobStore(redis_url, prefix=f"bitmesh-test-{new_job_id('caps')}")
    yield store
    keys = store.client.keys(f"{store.prefix}:*")
    if keys:
        store.client.delete(*keys)


def test_queued_job_cap_across_replicas(
    tmp_path: Path, redis_url: str, redis_store: RedisJobStore
) -> None:
    """Two replicas, one Redis: exactly CAP jobs queued, the rest refused."""
    from trainer_svc.celery_app import make_celery

    queue = f"caps-{new_job_id('q')}"
    settings = make_settings(tmp_path, redis_url=redis_url)
    celery = make_celery(settings)
    sent: list[str] = []

    def send(job_id: str) -> None:
        celery.send_task(PING.task_name, args=[job_id], queue=queue)
        sent.append(job_id)

    replicas: list[RunningServer] = []
    stubs = []
    for _ in range(2):
        # Each replica opens its own store on the same Redis, as pods do.
        store = RedisJobStore(redis_url, prefix=redis_store.prefix)
        servicer = QueuedTraining(store, CAP, send)
        running = create_server(
            "127.0.0.1:0",
            [lambda s, sv=servicer: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(sv, s)],
            ["bitmesh.v1.TrainerService"],
            settings,
        )
        replicas.append(running)
        stubs.append(
            trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        )
    try:
        request = trainer_pb2.StartTrainingRequest()
        calls = [(lambda st=stubs[i % 2]: st.StartJob(request, timeout=20)) for i in range(CALLERS)]
        accepted, refused = _submit_all(calls)
        assert len(accepted) == CAP
        _assert_clean_refusals(refused, CALLERS - CAP)
        # Nothing already queued was touched: the records and the messages are there.
        records = redis_store.list("training")
        assert {r.job_id for r in records} == {ref.job_id for ref in accepted} == set(sent)
        assert all(r.state is JobState.QUEUED for r in records)
        assert broker_queue_length(settings, queue) == CAP
        # Room again once one job ends.
        request_cancel(redis_store, accepted[0].job_id)
        assert stubs[1].StartJob(request, timeout=20).job_id
        with pytest.raises(grpc.RpcError) as info:
            stubs[0].StartJob(request, timeout=20)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        redis_store.client.delete(queue)
        for running in replicas:
            running.stop(1)
