"""Scrape-time gauges of bitmesh.rpc.metrics (jobs by state, queue length)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bitmesh.errors import Unavailable
from bitmesh.jobs.plumbing import PROXY_NAS_TRIALS, TRAINER, TRAINING_QUEUES
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import SqliteJobStore, transition
from bitmesh.rpc.metrics import (
    JOB_STORES,
    QUEUE_SERVICES,
    JobStoreCollector,
    QueueLengthCollector,
    broker_queue_length,
)
from bitmesh.settings import Settings
from bitmesh.v1 import proxy_nas_pb2, sensitivity_pb2, trainer_pb2

pytestmark = pytest.mark.unit


def _text(*collectors: object) -> str:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_jobs_by_state(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "j.sqlite3")
    for i, state in enumerate([JobState.QUEUED, JobState.QUEUED, JobState.FAILED]):
        store.create(JobRecord(job_id=f"j{i}", kind="training"))
        store.update(f"j{i}", lambda r, s=state: transition(r, state=s))
    store.create(JobRecord(job_id="other", kind="calibration"))
    text = _text(JobStoreCollector(lambda: store))
    assert 'bitmesh_jobs{kind="training",state="queued"} 2.0' in text
    assert 'bitmesh_jobs{kind="training",state="failed"} 1.0' in text
    assert 'bitmesh_jobs{kind="training",state="running"} 0.0' in text
    assert 'bitmesh_jobs{kind="calibration",state="queued"} 1.0' in text
    # Declared kinds are reported even before any job of theirs exists.
    assert 'bitmesh_jobs{kind="search",state="queued"} 0.0' not in text
    text = _text(JobStoreCollector(lambda: store, kinds=TRAINER.kinds))
    assert 'bitmesh_jobs{kind="search",state="queued"} 0.0' in text
    assert 'bitmesh_jobs{kind="training",state="queued"} 2.0' in text


def test_a_broken_source_does_not_break_the_scrape() -> None:
    def down(*_: object) -> int:
        raise Unavailable("Redis is not reachable")

    text = _text(QueueLengthCollector(down), JobStoreCollector(lambda: down()))  # type: ignore[arg-type, return-value]
    assert "bitmesh_queue_length{" not in text and "bitmesh_jobs{" not in text


def test_queue_length_per_training_queue() -> None:
    """One sample per declared training queue; one unreadable queue drops only its own."""
    waiting = {TRAINER.queue_name: 3}

    def length_of(queue: str) -> int:
        return waiting[queue]  # KeyError for the other queue: a broken source

    text = _text(QueueLengthCollector(length_of))
    assert f'bitmesh_queue_length{{queue="{TRAINER.queue_name}"}} 3.0' in text
    assert text.count("bitmesh_queue_length{") == 1
    waiting = dict.fromkeys(TRAINING_QUEUES, 0)
    text = _text(QueueLengthCollector(length_of))
    assert text.count("bitmesh_queue_length{") == len(TRAINING_QUEUES) >= 2


def test_filesystem_queue_length_counts_its_queue_only(tmp_path: Path) -> None:
    settings = Settings(artifact_root=str(tmp_path), redis_url=None)
    queue, other = TRAINER.queue_name, PROXY_NAS_TRIALS.queue_name
    assert broker_queue_length(settings, queue) == 0
    folder = tmp_path / "queue" / "in"
    folder.mkdir(parents=True)
    for name in (f"1_a.{queue}.msg", f"2_b.{queue}.msg", f"3_c.{other}.msg", f"4_d.x{queue}.msg"):
        (folder / name).write_text("{}")
    assert broker_queue_length(settings, queue) == 2
    assert broker_queue_length(settings, other) == 1


def test_service_tables_name_real_services() -> None:
    names = {
        m.DESCRIPTOR.services_by_name[n].full_name
        for m, n in (
            (sensitivity_pb2, "SensitivityService"),
            (trainer_pb2, "TrainerService"),
            (proxy_nas_pb2, "ProxyNasService"),
        )
    }
    assert set(JOB_STORES) == names
    assert names > QUEUE_SERVICES


def test_redis_memory_is_reported_from_info(tmp_path: Path) -> None:
    from bitmesh.rpc.metrics import RedisMemoryCollector, redis_info_memory
    from tests.redis_server import redis_server

    args = ["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]
    with redis_server(tmp_path / "redis", args) as server:
        text = _text(RedisMemoryCollector(lambda: redis_info_memory(server.url())))
    samples = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("bitmesh_redis_memory_")
    }
    assert samples["bitmesh_redis_memory_max_bytes"] == 64 * 1024 * 1024
    assert samples["bitmesh_redis_memory_used_bytes"] > 0
    down = _text(RedisMemoryCollector(lambda: redis_info_memory(server.url())))
    assert "bitmesh_redis_memory_used_bytes " not in down  # Redis is gone: no samples
