"""The lost-message window: a job whose message died with an idle worker.

An idle worker waits in BRPOP; Redis hands it the message, and kombu moves
the message to its unacked set only after reading it. A worker SIGKILLed in
between takes the message with it: nothing is left to redeliver, and the job
sits QUEUED. The trainer service's resender (trainer_svc/resend.py) must
then send it again after BITMESH_REQUEUE_AFTER_SECONDS (3 s here), not after
the last-resort 3,600 s.

The training job's test hits that window with a real idle worker, without
racing a kill against a read: the worker is frozen (SIGSTOP) while Redis
shows it blocked in BRPOP, so Redis hands the message to a process that
cannot read it, and SIGKILL then takes it down with it. The proxy trial's
test reproduces the same end state by popping the message.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bitmesh.jobs.plumbing import TRAINER
from bitmesh.settings import load_settings
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import proxy_nas_pb2 as p
from bitmesh.v1 import trainer_pb2 as t
from tests.integration.trainer.conftest import TrainerMesh, make_mesh
from tests.redis_server import RedisProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

# kombu's Redis transport keeps unacknowledged deliveries in this hash.
UNACKED_KEY = "unacked"


@pytest.fixture
def lost_mesh(aof_redis: RedisProcess, tmp_path: Path) -> Iterator[TrainerMesh]:
    mesh = make_mesh(aof_redis.url(2), 2, tmp_path)
    mesh.settings = load_settings(
        redis_url=mesh.redis_url,
        artifact_root=mesh.settings.artifact_root,
        requeue_after_seconds=3,
        sweep_seconds=0.5,
    )
    try:
        yield mesh
    finally:
        mesh.stop()


def _waiting_in_brpop(broker: redis.Redis) -> bool:
    """Whether a client of this database is blocked in BRPOP (the idle worker:
    nothing else here consumes), as Redis itself sees it."""
    db = broker.connection_pool.connection_kwargs.get("db", 0)
    return any(
        c.get("cmd") == "brpop" and "b" in c.get("flags", "") and int(c.get("db", -1)) == db
        for c in broker.client_list()
    )


def _hand_to_a_frozen_worker(
    broker: redis.Redis, worker: subprocess.Popen[bytes], send: Callable[[], str]
) -> str:
    """Freeze ``worker`` while it waits in BRPOP, then ``send`` the job: Redis
    hands the message to the frozen worker's BRPOP, out of the list. Returns
    the job id.

    kombu's BRPOP times out every second and is sent again, so the worker may
    be frozen between two of them, or its BRPOP may time out before the
    message arrives; then the message stays in the list, and it is taken back
    and pushed again at the next BRPOP (a loop on what Redis reports, not on
    time)."""
    queue = TRAINER.queue_name
    job_id, message = "", None
    for _ in range(50):
        wait_for(lambda: _waiting_in_brpop(broker), 30, "the idle worker to wait in BRPOP")
        os.killpg(worker.pid, signal.SIGSTOP)
        if _waiting_in_brpop(broker):
            if message is None:
                job_id = send()
            else:
                broker.lpush(queue, message)
            if broker.llen(queue) == 0:
                return job_id  # the frozen worker's socket holds it now
        if job_id and broker.llen(queue):
            message = broker.rpop(queue)
        os.killpg(worker.pid, signal.SIGCONT)
    raise AssertionError("the message never reached the idle worker's BRPOP in 50 tries")


def test_a_job_whose_message_died_with_an_idle_worker_is_re_sent(
    lost_mesh: TrainerMesh, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = lost_mesh
    mesh.start_service()
    idle = mesh.start_worker()
    broker = redis.Redis.from_url(mesh.redis_url)

    def send() -> str:
        with mesh.client() as client:
            return client.start_training(
                t.StartTrainingRequest(
                    model=c.ModelRef(architecture="digits_cnn"),
                    dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
                    qat=t.QatSpec(
                        default_option=c.QuantOption(weight=c.NumericFormat(name="int8"))
                    ),
                    training=t.TrainingSettings(steps=20, learning_rate=0.05),
                )
            ).job_id

    job_id = _hand_to_a_frozen_worker(broker, idle, send)
    mesh.kill_worker(idle)  # SIGKILL: the message it was handed dies with it
    assert mesh.queue_length() == 0 and broker.hlen(UNACKED_KEY) == 0  # nothing to redeliver
    assert mesh.store().get(job_id).state.value == "queued"

    with caplog.at_level(logging.WARNING, logger="trainer_svc.resend"):
        mesh.start_worker()
        with mesh.client() as client:
            done = wait_for(
                lambda: (
                    (r := client.get_training(job_id)).status.state
                    in (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED)
                    and r
                ),
                120,
                "the lost job to be re-sent and run",
                poll=0.5,
            )
    assert done.status.state == c.JOB_STATE_SUCCEEDED, done.status.error
    resent = [r for r in caplog.records if job_id in r.getMessage()]
    assert resent and "never reached a runner" in resent[0].getMessage()
    events = mesh.store().events_since(job_id, 0)
    assert [e["state"] for e in events].count("succeeded") == 1


def test_a_proxy_trial_run_whose_message_died_with_an_idle_worker_is_re_sent(
    lost_mesh: TrainerMesh, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from bitmesh.client import Client
    from bitmesh.jobs.plumbing import PROXY_NAS_TRIALS
    from bitmesh.rpc.service_main import start_service
    from proxy_nas_svc.servicer import build
    from tests.integration.durability.test_service_orphans import SEARCH

    mesh = lost_mesh
    service = start_service("proxy_nas", build, mesh.settings, port=0)
    unused = "127.0.0.1:1"
    addresses = {"proxy_nas": f"127.0.0.1:{service.port}"}
    addresses.update({n: unused for n in ("trainer", "sensitivity", "solver")})
    broker = redis.Redis.from_url(mesh.redis_url)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="proxy_nas_svc.coordinator"),
            Client(mesh.settings, addresses=addresses, timeout=60) as client,
        ):
            job_id = client.start_tuning(SEARCH).job_id
            # No worker yet: the first run's message waits; take it as the
            # dead worker's BRPOP did.
            wait_for(lambda: broker.llen(PROXY_NAS_TRIALS.queue_name) > 0, 60, "a run message")
            assert broker.rpop(PROXY_NAS_TRIALS.queue_name) is not None
            mesh.start_worker()
            done = wait_for(
                lambda: (
                    (r := client.get_tuning(job_id)).status.state
                    in (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED)
                    and r
                ),
                180,
                "the search to end",
                poll=0.5,
            )
        assert done.status.state == c.JOB_STATE_SUCCEEDED, done.status.error
        # No run failed (a lost run would end "no result within 3600 s").
        assert all(trial.state != p.TRIAL_STATE_FAILED for trial in done.trials), [
            (trial.number, trial.reason) for trial in done.trials
        ]
        assert any("message was lost" in r.getMessage() for r in caplog.records)
    finally:
        service.stop(1)


def test_a_dead_worker_s_running_job_is_re_sent_long_before_the_visibility_timeout(
    lost_mesh: TrainerMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole worker SIGKILLed mid-job: Redis would restore its delivery
    only after the visibility timeout (10 minutes here, two hours by
    default); the resender sees the lease lapse and re-sends it."""
    from trainer_svc import checkpoints

    mesh = lost_mesh
    mesh.env.update(BITMESH_TRAINER_VISIBILITY_TIMEOUT_S="600", BITMESH_TRAINER_LEASE_TTL_S="3")
    monkeypatch.setenv("BITMESH_TRAINER_LEASE_TTL_S", "3")  # the service's resender reads it
    mesh.start_worker()
    mesh.start_service()
    steps = 400
    with mesh.client() as client:
        job_id = client.start_training(
            t.StartTrainingRequest(
                model=c.ModelRef(architecture="digits_cnn"),
                dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
                qat=t.QatSpec(default_option=c.QuantOption(weight=c.NumericFormat(name="int8"))),
                training=t.TrainingSettings(steps=steps, checkpoint_every=40, learning_rate=0.05),
            )
        ).job_id
    artifacts = mesh.artifacts()
    wait_for(
        lambda: (checkpoints.latest(artifacts, job_id) or {}).get("step", 0) >= 80,
        120,
        "a checkpoint at step 80",
    )
    mesh.kill_worker(mesh.workers[-1])  # main process and pool child: no reject, no requeue
    checkpoint_step = checkpoints.latest(artifacts, job_id)["step"]
    mesh.start_worker()
    with mesh.client() as client:
        done = wait_for(
            lambda: (
                (r := client.get_training(job_id)).status.state
                in (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED)
                and r
            ),
            120,
            "the re-sent job to finish",
            poll=0.5,
        )
    assert done.status.state == c.JOB_STATE_SUCCEEDED, done.status.error
    assert list(done.resumed_from) == [checkpoint_step]
    assert done.steps_done == steps
    events = mesh.store().events_since(job_id, 0)
    assert [e["state"] for e in events].count("succeeded") == 1
