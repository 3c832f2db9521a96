"""gRPC edge of the trainer: converts and maps errors, nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grpc

from bitmesh.jobs.store import JobStore, open_job_store, request_cancel
from bitmesh.rpc.convert import job_event_status_to_pb, job_status_to_pb
from bitmesh.rpc.job_servicer import list_jobs, not_landed
from bitmesh.rpc.jobs import watch_events
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def StartJob(self, request: trainer_pb2.StartTrainingRequest, context: grpc.ServicerContext) -> common_pb2.JobRef:
        raise not_landed("training jobs (QAT, one-shot FLIQS search, calibration)", "Trainer service")

    def WatchJob(self, request: common_pb2.JobRef, context: grpc.ServicerContext) -> Iterator[trainer_pb2.TrainingEvent]:
        yield from watch_events(
            self.store,
            request.job_id,
            context,
            lambda record, event: trainer_pb2.TrainingEvent(status=job_event_status_to_pb(record, event)),
        )

    def GetJob(self, request: common_pb2.JobRef, context: grpc.ServicerContext) -> trainer_pb2.TrainingResult:
        return trainer_pb2.TrainingResult(status=job_status_to_pb(self.store.get(request.job_id)))

    def CancelJob(self, request: common_pb2.JobRef, context: grpc.ServicerContext) -> common_pb2.JobStatus:
        return job_status_to_pb(request_cancel(self.store, request.job_id))

    def ListJobs(self, request: common_pb2.ListJobsRequest, context: grpc.ServicerContext) -> common_pb2.ListJobsResponse:
        return list_jobs(self.store, None, request)


def build(settings: Settings) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    servicer = TrainerServicer(open_job_store(settings.redis_url, settings.artifact_root, "trainer"))
    return [lambda s: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, s)], [SERVICE_NAME], []
