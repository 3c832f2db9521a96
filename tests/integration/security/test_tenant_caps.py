"""Per-tenant fairness caps over a real trainer server (issue 16, follow-ups).

A token file with two tenants, the global cap BITMESH_MAX_CONCURRENT_JOBS=4
and BITMESH_MAX_JOBS_PER_TENANT=2, the trainer started as in production
(``start_service``, the embedded queue with no worker: its jobs stay queued,
which is what a full queue is). alice at her cap is refused with
RESOURCE_EXHAUSTED and nothing is queued for her; bob still gets in. The
count is the job store's, so a restarted server refuses alice too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bitmesh.jobs.plumbing import TRAINER
from bitmesh.jobs.store import open_job_store
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import Settings
from bitmesh.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
PER_TENANT = 2
GLOBAL = 4


def auth(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[tenant]}"),)


def _training() -> trainer_pb2.StartTrainingRequest:
    return trainer_pb2.StartTrainingRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS),
        qat=trainer_pb2.QatSpec(
            default_option=common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int8"))
        ),
        training=trainer_pb2.TrainingSettings(steps=2, batch_size=16, eval_every=0),
    )


@dataclass
class Trainer:
    settings: Settings
    server: RunningServer
    channel: grpc.Channel

    def stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.channel)

    def start(self, tenant: str) -> str:
        return self.stub().StartJob(_training(), metadata=auth(tenant), timeout=120).job_id

    def refusal(self, tenant: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.start(tenant)
        return info.value

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(1)


def _serve(settings: Settings) -> Trainer:
    from trainer_svc.servicer import build

    server = start_service("trainer", build, settings, port=0)
    return Trainer(settings, server, grpc.insecure_channel(f"127.0.0.1:{server.port}"))


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[Trainer]:
    token_file = tmp_path / "tokens"
    token_file.write_text("".join(f"{t}: {k}\n" for t, k in TOKENS.items()))
    settings = make_settings(
        tmp_path / "root",
        token_file=str(token_file),
        max_concurrent_jobs=GLOBAL,
        max_jobs_per_tenant=PER_TENANT,
    )
    running = _serve(settings)
    yield running
    running.stop()


def _open_jobs_of(settings: Settings, tenant: str) -> list[str]:
    store = open_job_store(None, settings.artifact_root, TRAINER.store)
    return [r.job_id for r in store.list(None, 100) if r.tenant == tenant and not r.state.terminal]


def test_a_tenant_at_its_cap_is_refused_while_another_gets_in(trainer: Trainer) -> None:
    alices = [trainer.start("alice") for _ in range(PER_TENANT)]
    error = trainer.refusal("alice")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"{PER_TENANT} of your qat jobs are queued or running" in error.details()
    assert f"the cap per tenant is {PER_TENANT}" in error.details()
    assert "BITMESH_MAX_JOBS_PER_TENANT" in error.details()
    assert "bob" not in error.details()
    assert sorted(_open_jobs_of(trainer.settings, "alice")) == sorted(alices)  # nothing queued

    bobs = [trainer.start("bob") for _ in range(PER_TENANT)]  # the service had room for bob
    assert len(set(bobs)) == PER_TENANT
    # The global cap (4 open) now refuses everyone, with its own message.
    error = trainer.refusal("bob")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the cap is {GLOBAL}" in error.details()
    assert "BITMESH_MAX_CONCURRENT_JOBS" in error.details()

    trainer.stub().CancelJob(common_pb2.JobRef(job_id=bobs[0]), metadata=auth("bob"), timeout=30)
    error = trainer.refusal("alice")  # a freed global place is still not alice's to take
    assert "BITMESH_MAX_JOBS_PER_TENANT" in error.details()
    trainer.stub().CancelJob(
        common_pb2.JobRef(job_id=alices[0]), metadata=auth("alice"), timeout=30
    )
    assert trainer.start("alice")  # her own cancelled job freed her place


def test_the_cap_is_counted_from_the_store_across_a_restart(trainer: Trainer) -> None:
    for _ in range(PER_TENANT):
        trainer.start("alice")
    trainer.stop()
    again = _serve(trainer.settings)
    try:
        error = again.refusal("alice")
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "BITMESH_MAX_JOBS_PER_TENANT" in error.details()
        assert again.start("bob")
    finally:
        again.stop()
    trainer.server = again.server  # the fixture's stop is then a second, harmless one
    trainer.channel = again.channel
