"""No orphans: a service SIGKILLed mid-job, then started again.

The sensitivity service runs analyses in its own threads, the proxy NAS
service coordinates searches in its own; a SIGKILL runs no shutdown hook, so
before the sweeper their records stayed RUNNING for ever and kept their cap
slots. Each service runs with a 2 s lease and a 0.5 s sweep
(conftest.DURABILITY_ENV) and a cap of one job, so a leftover orphan would
refuse the next job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bitmesh.client import Client
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import proxy_nas_pb2 as p
from bitmesh.v1 import sensitivity_pb2 as s
from tests.integration.durability.conftest import ServiceProcess, service_env
from tests.redis_server import RedisProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TERMINAL = (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED, c.JOB_STATE_CANCELLED)
# ~5-10 s of traces for digits_cnn on this kind of machine: long enough to be
# killed mid-analysis, short enough to run again within the test's bounds.
ANALYSIS = s.StartAnalysisRequest(
    model=c.ModelRef(architecture="digits_cnn"),
    dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS, batch_size=64),
    options=[c.QuantOption(weight=c.NumericFormat(name="int4"))],
    settings=s.EstimatorSettings(target_relative_se=1e-6, max_samples=400, seed=3, num_batches=1),
)


def _client(name: str, service: ServiceProcess) -> Client:
    from bitmesh.settings import load_settings

    unused = "127.0.0.1:1"
    addresses = {n: unused for n in ("trainer", "sensitivity", "solver", "proxy_nas")}
    addresses[name] = service.address
    settings = load_settings(
        redis_url=service.env["REDIS_URL"], artifact_root=service.env["BITMESH_ARTIFACT_ROOT"]
    )
    return Client(settings, addresses=addresses, timeout=60)


@pytest.fixture
def redis_url(aof_redis: RedisProcess) -> Iterator[str]:
    import redis

    url = aof_redis.url(1)
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def _service(name: str, redis_url: str, tmp_path: Path) -> ServiceProcess:
    env = service_env(redis_url, tmp_path / "artifacts", BITMESH_MAX_CONCURRENT_JOBS="1")
    return ServiceProcess(name, env, tmp_path / f"{name}.log")


def test_a_killed_sensitivity_service_s_analysis_resumes_and_frees_its_slot(
    redis_url: str, tmp_path: Path
) -> None:
    service = _service("sensitivity", redis_url, tmp_path).start()
    try:
        with _client("sensitivity", service) as client:
            job_id = client.start_analysis(ANALYSIS).job_id
            wait_for(
                lambda: client.get_analysis(job_id).status.progress > 0,
                60,
                "the analysis to report progress",
            )
        service.kill()
        service.start()
        with _client("sensitivity", service) as client:
            # Taken over by the new process's sweeper: resumed (started over)
            # or ended with a reason, within 30 s, never left to the dead one.
            wait_for(
                lambda: (
                    client.get_analysis(job_id).status.state in TERMINAL
                    or f"job {job_id} was running with no live runner" in service.text()
                ),
                30,
                "the new service to take the orphan over",
                poll=0.2,
            )
            final = wait_for(
                lambda: (r := client.get_analysis(job_id)).status.state in TERMINAL and r,
                120,
                "the resumed analysis to end",
                poll=0.5,
            )
            assert final.status.state == c.JOB_STATE_SUCCEEDED, final.status.error
            assert len(final.report.layers) == 5
            # Its slot is free: the cap is one job, and the next one is admitted.
            again = client.start_analysis(ANALYSIS).job_id
            assert again != job_id
    finally:
        service.stop()


SEARCH = p.StartSearchRequest(
    model=c.ModelRef(architecture="digits_cnn"),
    dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
    default_option=c.QuantOption(weight=c.NumericFormat(name="int8")),
    space=[
        p.Hyperparameter(
            name="learning_rate", categorical=p.Categorical(choices=["0.002", "0.02", "0.2"])
        )
    ],
    trials=3,
    fidelity=[p.Rung(data_fraction=0.25, steps=8)],
    full_fidelity=p.Rung(data_fraction=1.0, steps=16),
    reduction_factor=2,
    parallel_trials=1,
    sampler="random",
    seed=0,
)


def test_a_killed_proxy_nas_service_s_search_ends_failed_with_a_reason_and_frees_its_slot(
    redis_url: str, tmp_path: Path
) -> None:
    # No trial worker runs: the search waits on its first run, RUNNING, the
    # whole time its coordinator lives.
    service = _service("proxy_nas", redis_url, tmp_path).start()
    try:
        with _client("proxy_nas", service) as client:
            job_id = client.start_tuning(SEARCH).job_id
            wait_for(
                lambda: client.get_tuning(job_id).status.state == c.JOB_STATE_RUNNING,
                60,
                "the search to run",
            )
        service.kill()
        service.start()
        with _client("proxy_nas", service) as client:
            final = wait_for(
                lambda: (r := client.get_tuning(job_id)).status.state in TERMINAL and r,
                30,
                "the orphaned search to end",
                poll=0.2,
            )
            assert final.status.state == c.JOB_STATE_FAILED
            assert "stopped" in final.status.error and "start the search again" in (
                final.status.error
            )
            # Its slot is free: the cap is one open search, and this one is admitted.
            again = client.start_tuning(SEARCH).job_id
            assert again != job_id
            client.cancel_tuning(again)
    finally:
        service.stop()
