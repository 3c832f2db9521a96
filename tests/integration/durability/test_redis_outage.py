"""A Redis outage mid-job: the job rides it out, or is handed back and resumes.

Redis runs with AOF (``appendfsync everysec``) on a port of its own and is
SIGKILLed while a real Celery worker trains. The worker's lease TTL and
visibility timeout are production-like here (30 s, 60 s), so what carries
the job through is the store retry (bitmesh.jobs.retry), not a redelivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bitmesh.errors import Unavailable
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import trainer_pb2 as t
from tests.integration.trainer.conftest import TrainerMesh, make_mesh
from tests.redis_server import RedisProcess
from tests.waiting import wait_for
from trainer_svc import checkpoints
from trainer_svc.jobs import ATTEMPTS_NAMESPACE

pytestmark = pytest.mark.integration

STEPS = 600
OUTAGE_SEEN = "is unreachable"  # bitmesh.jobs.retry's first warning, in the worker log
PAST_WINDOW = "was unreachable for 2 s"  # its StoreOutage, past a 2 s window


@pytest.fixture
def outage_mesh(aof_redis: RedisProcess, tmp_path: Path) -> Iterator[TrainerMesh]:
    mesh = make_mesh(aof_redis.url(0), 0, tmp_path)
    mesh.env.update(
        BITMESH_TRAINER_LEASE_TTL_S="30",
        BITMESH_TRAINER_VISIBILITY_TIMEOUT_S="60",
        OMP_NUM_THREADS="1",
    )
    try:
        yield mesh
    finally:
        mesh.stop()
        if not aof_redis.answers():
            aof_redis.start()


def _search() -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        search=t.SearchSpec(
            formats=[c.NumericFormat(name=n) for n in ("int4", "e2m1", "int8")],
            target_option=c.QuantOption(weight=c.NumericFormat(name="int4")),
        ),
        training=t.TrainingSettings(steps=STEPS, checkpoint_every=40, learning_rate=0.05),
    )


def _state(mesh: TrainerMesh, job_id: str) -> t.TrainingResult:
    with mesh.client() as client:
        return client.get_training(job_id)


def _worker_log(mesh: TrainerMesh) -> str:
    return mesh.logs[mesh.workers[-1].pid].read_text(errors="replace")


def _start_mid_job(mesh: TrainerMesh) -> tuple[str, int]:
    """Start a job and wait for a checkpoint at step 80 or later."""
    mesh.start_worker()
    mesh.start_service()
    with mesh.client() as client:
        job_id = client.start_training(_search()).job_id
    artifacts = mesh.artifacts()
    step: int = wait_for(
        lambda: (
            (checkpoints.latest(artifacts, job_id) or {}).get("step", 0) >= 80
            and checkpoints.latest(artifacts, job_id)["step"]
        ),
        120,
        "a checkpoint at step 80",
    )
    return job_id, step


def _succeeded_once(mesh: TrainerMesh, job_id: str) -> t.TrainingResult:
    done: t.TrainingResult = wait_for(
        lambda: (
            (r := _state(mesh, job_id)).status.state
            in (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED, c.JOB_STATE_CANCELLED)
            and r
        ),
        180,
        "the job to end",
        poll=0.5,
    )
    assert done.status.state == c.JOB_STATE_SUCCEEDED, done.status.error
    assert done.steps_done == STEPS
    steps_seen = [int(p.step) for p in done.history]
    assert steps_seen == sorted(set(steps_seen)) and steps_seen[-1] == STEPS
    events = mesh.store().events_since(job_id, 0)
    assert [e["state"] for e in events].count("succeeded") == 1
    return done


def test_redis_killed_mid_job_and_back_within_seconds_the_job_goes_on(
    aof_redis: RedisProcess, outage_mesh: TrainerMesh
) -> None:
    mesh = outage_mesh
    mesh.env["BITMESH_STORE_RETRY_SECONDS"] = "120"
    job_id, _ = _start_mid_job(mesh)
    aof_redis.kill()
    wait_for(lambda: OUTAGE_SEEN in _worker_log(mesh), 30, "the job to meet the outage")
    # Meanwhile a client is told to retry (UNAVAILABLE, with why), never INTERNAL.
    with mesh.client() as client, pytest.raises(Unavailable, match="Redis is not reachable"):
        client.get_training(job_id)
    aof_redis.start()  # within a few seconds of the kill: AOF brings the job's record back

    done = _succeeded_once(mesh, job_id)
    # It went on where it was: no restart, no second delivery.
    assert list(done.resumed_from) == []
    assert mesh.artifacts().get_ref(ATTEMPTS_NAMESPACE, job_id) == {"attempts": 1}


def test_redis_down_past_the_retry_window_the_job_is_redelivered_and_resumes(
    aof_redis: RedisProcess, outage_mesh: TrainerMesh
) -> None:
    mesh = outage_mesh
    mesh.env["BITMESH_STORE_RETRY_SECONDS"] = "2"
    job_id, _ = _start_mid_job(mesh)
    aof_redis.kill()
    wait_for(lambda: PAST_WINDOW in _worker_log(mesh), 60, "the retry window to run out")
    aof_redis.start()

    done = _succeeded_once(mesh, job_id)
    # Handed back (QUEUED, the task retried), then resumed from its checkpoint.
    assert len(done.resumed_from) == 1 and done.resumed_from[0] >= 80
    # Both deliveries count toward BITMESH_TRAINER_MAX_ATTEMPTS, the first as an outage.
    assert mesh.artifacts().get_ref(ATTEMPTS_NAMESPACE, job_id) == {"attempts": 2, "outages": 1}
    assert "Retry in" in _worker_log(mesh)  # Celery's retry, not a failure or an ack
