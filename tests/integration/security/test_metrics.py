"""The Prometheus endpoint reports the calls just made, jobs and the queue."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bitmesh.jobs.plumbing import PING, PROXY_NAS_TRIALS, SENSITIVITY, TRAINER, TRAINING_QUEUES
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import open_job_store, transition
from bitmesh.rpc.server import create_server
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, sensitivity_pb2_grpc
from sensitivity_svc.servicer import build
from tests.integration.security.conftest import TOKEN, free_port, make_settings

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rpc(samples: Samples, name: str, method: str, **labels: str) -> float:
    key = frozenset(
        {"grpc_service": "bitmesh.v1.SensitivityService", "grpc_method": method, **labels}.items()
    )
    return samples.get((name, key), 0.0)


def test_calls_errors_latencies_and_jobs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_token=TOKEN, metrics_port=free_port())
    running = start_service("sensitivity", build, settings, port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    try:
        store = open_job_store(None, settings.artifact_root, SENSITIVITY.store)
        (kind,) = SENSITIVITY.kinds
        for i, state in enumerate([JobState.QUEUED, JobState.RUNNING, JobState.RUNNING]):
            store.create(JobRecord(job_id=f"sensitivity-{i}", kind=kind))
            store.update(f"sensitivity-{i}", lambda r, s=state: transition(r, state=s))
        for _ in range(4):
            stub.ListAnalyses(common_pb2.ListJobsRequest(), metadata=auth, timeout=5)
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub.GetAnalysis(common_pb2.JobRef(job_id="nope"), metadata=auth, timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.ListAnalyses(common_pb2.ListJobsRequest(), timeout=5)  # no token

        samples = scrape(running.metrics_port)
        calls, errors = "bitmesh_rpc_calls_total", "bitmesh_rpc_errors_total"
        assert rpc(samples, calls, "ListAnalyses", grpc_code="OK") == 4
        assert rpc(samples, calls, "ListAnalyses", grpc_code="UNAUTHENTICATED") == 1
        assert rpc(samples, calls, "GetAnalysis", grpc_code="NOT_FOUND") == 2
        assert rpc(samples, errors, "GetAnalysis", grpc_code="NOT_FOUND") == 2
        assert rpc(samples, errors, "ListAnalyses", grpc_code="OK") == 0
        assert rpc(samples, "bitmesh_rpc_latency_seconds_count", "ListAnalyses") == 5
        assert rpc(samples, "bitmesh_rpc_latency_seconds_sum", "ListAnalyses") > 0
        assert rpc(samples, "bitmesh_rpc_in_flight", "ListAnalyses") == 0

        def jobs(state: str) -> float:
            key = frozenset({"kind": kind, "state": state}.items())
            return samples[("bitmesh_jobs", key)]

        assert (jobs("queued"), jobs("running"), jobs("succeeded")) == (1, 2, 0)
    finally:
        channel.close()
        running.stop(1)
    with pytest.raises(OSError):  # the endpoint stops with the server
        scrape(running.metrics_port)


def test_queue_length_of_celery_services(tmp_path: Path) -> None:
    """The trainer reports how many Celery messages wait on each training queue
    (embedded broker here); tasks reach their queue by the declared routes."""
    from trainer_svc.celery_app import make_celery, send_job

    settings = make_settings(tmp_path, metrics_port=free_port())
    running = create_server("127.0.0.1:0", [], ["bitmesh.v1.TrainerService"], settings)

    def lengths() -> dict[str, float]:
        samples = scrape(running.metrics_port)
        return {
            dict(labels)["queue"]: value
            for (name, labels), value in samples.items()
            if name == "bitmesh_queue_length"
        }

    try:
        assert lengths() == dict.fromkeys(TRAINING_QUEUES, 0)
        celery = make_celery(settings, discover=False)
        for job_id in ("a", "b"):
            send_job(celery, job_id)
        celery.send_task(PROXY_NAS_TRIALS.task_name, args=["run-1"])  # routed, no queue named
        celery.send_task(PING.task_name, args=["token"])  # not a training queue
        assert lengths() == {TRAINER.queue_name: 2, PROXY_NAS_TRIALS.queue_name: 1}
    finally:
        running.stop(1)


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    running = start_service("sensitivity", build, make_settings(tmp_path), port=0)
    try:
        assert running.metrics is None and running.metrics_port == 0
    finally:
        running.stop(1)
