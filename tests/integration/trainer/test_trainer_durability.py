"""Durability: a killed worker's job resumes once; cancel; a restarted service.

The worker runs with a 5 s visibility timeout and a 3 s lease (conftest), so
a job whose worker is SIGKILLed is redelivered within seconds.
"""

from __future__ import annotations

import pytest

from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import trainer_pb2 as t
from tests.integration.trainer.conftest import TrainerMesh
from tests.waiting import wait_for
from trainer_svc import checkpoints
from trainer_svc.jobs import ATTEMPTS_NAMESPACE

pytestmark = pytest.mark.integration

REDIS_DB = 12


def _search(steps: int, checkpoint_every: int) -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        search=t.SearchSpec(
            formats=[c.NumericFormat(name=n) for n in ("int4", "e2m1", "int8")],
            target_option=c.QuantOption(weight=c.NumericFormat(name="int4")),
        ),
        training=t.TrainingSettings(
            steps=steps, checkpoint_every=checkpoint_every, learning_rate=0.05
        ),
    )


def _state(mesh: TrainerMesh, job_id: str) -> t.TrainingResult:
    with mesh.client() as client:
        return client.get_training(job_id)


def test_cancel_and_a_restarted_service(mesh: TrainerMesh) -> None:
    # 5,000 steps: progress every 50 steps (so the first shows within
    # seconds), and far longer than the test if the cancel did nothing.
    with mesh.client() as client:
        running_id = client.start_training(_search(5_000, 0)).job_id
        queued_id = client.start_training(_search(5_000, 0)).job_id
    wait_for(lambda: _state(mesh, running_id).steps_done >= 20, 90, "the first job to train")

    # The service goes away and comes back: the job is still there, still running.
    mesh.stop_service()
    mesh.start_service()
    seen = _state(mesh, running_id)
    assert seen.status.state == c.JOB_STATE_RUNNING and seen.steps_done >= 20
    with mesh.client() as client:
        assert {running_id, queued_id} <= {job.job_id for job in client.list_training().jobs}
        # A queued job is cancelled at once; a running one within seconds.
        assert client.cancel_training(queued_id).state == c.JOB_STATE_CANCELLED
        assert client.cancel_training(running_id).message == "cancelling"
    wait_for(
        lambda: _state(mesh, running_id).status.state == c.JOB_STATE_CANCELLED, 60, "the cancel"
    )
    assert _state(mesh, running_id).steps_done < 5_000  # stopped between steps
    # The worker then takes the cancelled job's message and does nothing with it.
    wait_for(lambda: mesh.queue_length() == 0, 30, "the queue to drain")
    assert _state(mesh, queued_id).status.state == c.JOB_STATE_CANCELLED
    # Its one event is the cancel's final one: the worker wrote nothing.
    assert [e["state"] for e in mesh.store().events_since(queued_id, 0)] == ["cancelled"]


def test_a_killed_worker_s_job_resumes_from_its_checkpoint_and_finishes_once(
    mesh: TrainerMesh,
) -> None:
    steps = 500
    with mesh.client() as client:
        job_id = client.start_training(_search(steps, 40)).job_id
    artifacts = mesh.artifacts()
    wait_for(
        lambda: (checkpoints.latest(artifacts, job_id) or {}).get("step", 0) >= 80,
        90,
        "a checkpoint at step 80",
    )
    mesh.kill_worker(mesh.workers[-1])  # SIGKILL, whole process group, mid-run
    checkpoint_step = checkpoints.latest(artifacts, job_id)["step"]
    assert checkpoint_step < steps
    assert _state(mesh, job_id).status.state == c.JOB_STATE_RUNNING

    mesh.start_worker()
    done = wait_for(
        lambda: (r := _state(mesh, job_id)).status.state == c.JOB_STATE_SUCCEEDED and r,
        120,
        "the resumed job to finish",
        poll=0.5,
    )
    assert list(done.resumed_from) == [checkpoint_step]
    assert done.steps_done == steps
    steps_seen = [int(p.step) for p in done.history]
    assert steps_seen == sorted(set(steps_seen)) and steps_seen[-1] == steps
    events = mesh.store().events_since(job_id, 0)
    assert [e["state"] for e in events].count("succeeded") == 1
    assert artifacts.get_ref(ATTEMPTS_NAMESPACE, job_id) == {"attempts": 2}
    assert done.final_entropy < 0.5
