"""gRPC edge of the trainer: converts, validates, enqueues; nothing more.

StartJob checks the request against the model and data *before* anything is
stored or enqueued (INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND with
the reason), then records the job and sends its id to the trainer queue. The
job's state lives in the shared job store, so any replica (or a restarted
service) answers Get/Watch/Cancel/List for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence

import grpc

from bitmesh.errors import NotFound, Unavailable
from bitmesh.jobs.admission import create_admitted
from bitmesh.jobs.ending import finish
from bitmesh.jobs.plumbing import TRAINER
from bitmesh.jobs.records import JobRecord, JobState, new_job_id
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.jobs.tenancy import cancel_owned, owned_job
from bitmesh.models.sandbox import close_on_stop
from bitmesh.rpc.convert import job_status_to_pb
from bitmesh.rpc.job_servicer import list_jobs
from bitmesh.rpc.jobs import watch_events
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.tenants import DEFAULT_TENANT, current_tenant
from bitmesh.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from trainer_svc.celery_app import make_celery, ready_to_send, restore_lost_fetches, send_job

log = logging.getLogger(__name__)

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
STORE_NAME = TRAINER.store

Enqueue = Callable[[str], None]


def job_id_for(kind: str, request_id: str, tenant: str = DEFAULT_TENANT) -> str:
    """A new id, or a stable one for an idempotency key.

    The key is the caller's: two tenants sending the same key get two jobs
    (the tenant is hashed with it; ``default`` hashes the key alone, as before
    tenants, so a retried call finds the job it made then)."""
    if not request_id:
        return new_job_id(kind)
    key = request_id if tenant == DEFAULT_TENANT else f"{tenant}\x00{request_id}"
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(
        self,
        store: JobStore,
        enqueue: Enqueue,
        max_open_jobs: int,
        max_tenant_jobs: int | None = None,
    ) -> None:
        """``max_open_jobs``: the service's cap (BITMESH_MAX_CONCURRENT_JOBS);
        ``max_tenant_jobs``: one tenant's (BITMESH_MAX_JOBS_PER_TENANT)."""
        self.store = store
        self.enqueue = enqueue
        self.max_open_jobs = max_open_jobs
        self.max_tenant_jobs = max_tenant_jobs

    def StartJob(
        self, request: trainer_pb2.StartTrainingRequest, context: grpc.ServicerContext
    ) -> common_pb2.JobRef:
        from trainer_svc.convert import request_from_pb

        domain = request_from_pb(request)
        tenant = current_tenant()
        job_id = job_id_for(domain.kind, request.request_id, tenant)
        if request.request_id:
            try:
                return common_pb2.JobRef(job_id=owned_job(self.store, job_id, tenant).job_id)
            except NotFound:
                pass
        # Here, not at the top: checking builds an architecture (torch), which
        # a request refused by its fields alone should not wait for. A program
        # file is never loaded here: the sandbox's table answers its checks.
        from trainer_svc.workspace import check_at_submission

        check_at_submission(domain)
        record = create_admitted(
            self.store,
            JobRecord(job_id=job_id, kind=domain.kind, request=domain.to_dict(), tenant=tenant),
            self.max_open_jobs,
            self.max_tenant_jobs,
        )
        try:
            self.enqueue(record.job_id)
        except Exception as exc:
            log.exception("could not enqueue job %s", job_id)
            reason = f"the job queue is unreachable ({type(exc).__name__}); is Redis up?"
            finish(self.store, job_id, state=JobState.FAILED, error=reason, message="failed")
            raise Unavailable(reason) from exc
        return common_pb2.JobRef(job_id=record.job_id)

    def WatchJob(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.TrainingEvent]:
        from trainer_svc.convert import event_to_pb

        yield from watch_events(self.store, request.job_id, context, event_to_pb)

    def GetJob(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> trainer_pb2.TrainingResult:
        from trainer_svc.convert import result_to_pb

        record = owned_job(self.store, request.job_id)
        events = [] if record.result is not None else self.store.events_since(record.job_id, 0)
        return result_to_pb(record, events)

    def CancelJob(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> common_pb2.JobStatus:
        return job_status_to_pb(cancel_owned(self.store, request.job_id))

    def ListJobs(
        self, request: common_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> common_pb2.ListJobsResponse:
        return list_jobs(self.store, None, request)


def celery_enqueue(settings: Settings) -> Enqueue:
    """Send job ids to the trainer queue of the broker ``settings`` name."""
    app = ready_to_send(make_celery(settings, discover=False))

    def send(job_id: str) -> None:
        send_job(app, job_id)

    return send


def build(
    settings: Settings,
) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    from bitmesh.jobs.lease import open_lease
    from bitmesh.rpc.metrics import broker_queue_length
    from trainer_svc.config import TrainerSettings
    from trainer_svc.resend import Resender

    store = open_job_store(settings.redis_url, settings.artifact_root, STORE_NAME)
    enqueue = celery_enqueue(settings)
    celery = make_celery(settings, discover=False)
    servicer = TrainerServicer(
        store, enqueue, settings.max_concurrent_jobs, settings.tenant_job_cap
    )
    resender = Resender(
        store,
        open_lease(settings.redis_url, settings.artifact_root, STORE_NAME),
        enqueue,
        lambda: broker_queue_length(settings, TRAINER.queue_name),
        TrainerSettings().lease_ttl_s,
        settings.requeue_after_seconds,
        before_sweep=lambda: restore_lost_fetches(celery),
    ).start(settings.sweep_seconds)

    def register(server: grpc.Server) -> None:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)

    return [register], [SERVICE_NAME], [resender.stop, close_on_stop]
