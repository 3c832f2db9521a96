"""gRPC edge of the proxy NAS service: converts and maps errors, nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grpc

from bitmesh.jobs.store import JobStore, open_job_store, request_cancel
from bitmesh.rpc.convert import job_event_status_to_pb, job_status_to_pb
from bitmesh.rpc.job_servicer import list_jobs, not_landed
from bitmesh.rpc.jobs import watch_events
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.v1 import common_pb2, proxy_nas_pb2, proxy_nas_pb2_grpc

SERVICE_NAME = proxy_nas_pb2.DESCRIPTOR.services_by_name["ProxyNasService"].full_name


class ProxyNasServicer(proxy_nas_pb2_grpc.ProxyNasServiceServicer):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def StartSearch(
        self, request: proxy_nas_pb2.StartSearchRequest, context: grpc.ServicerContext
    ) -> common_pb2.JobRef:
        raise not_landed("hyperparameter proxy search", "Proxy NAS service")

    def WatchSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[proxy_nas_pb2.SearchEvent]:
        yield from watch_events(
            self.store,
            request.job_id,
            context,
            lambda record, event: proxy_nas_pb2.SearchEvent(
                status=job_event_status_to_pb(record, event)
            ),
        )

    def GetSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> proxy_nas_pb2.SearchResult:
        return proxy_nas_pb2.SearchResult(status=job_status_to_pb(self.store.get(request.job_id)))

    def CancelSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> common_pb2.JobStatus:
        return job_status_to_pb(request_cancel(self.store, request.job_id))

    def ListSearches(
        self, request: common_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> common_pb2.ListJobsResponse:
        return list_jobs(self.store, None, request)


def build(
    settings: Settings,
) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    servicer = ProxyNasServicer(
        open_job_store(settings.redis_url, settings.artifact_root, "proxy_nas")
    )
    return (
        [lambda s: proxy_nas_pb2_grpc.add_ProxyNasServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        [],
    )
