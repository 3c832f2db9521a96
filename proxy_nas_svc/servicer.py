"""gRPC edge of the proxy NAS service: converts, validates, starts; nothing more.

StartSearch checks the request (INVALID_ARGUMENT / FAILED_PRECONDITION /
NOT_FOUND with the reason) before anything is stored, solves budgets into a
configuration through the solver service, records the job under the
admission cap and starts its coordinator (:mod:`proxy_nas_svc.jobs`), which
sends the trials to the Celery workers. Get/Watch/Cancel/List read the shared
job store, so any replica answers them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc

from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.jobs.admission import create_admitted
from bitmesh.jobs.plumbing import PROXY_NAS
from bitmesh.jobs.records import JobRecord, new_job_id
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.jobs.tenancy import cancel_owned, owned_job
from bitmesh.models.sandbox import close_on_stop
from bitmesh.rpc.convert import job_status_to_pb, option_from_pb
from bitmesh.rpc.job_servicer import list_jobs
from bitmesh.rpc.jobs import watch_events
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.tenants import DEFAULT_TENANT, current_tenant
from bitmesh.v1 import common_pb2, proxy_nas_pb2, proxy_nas_pb2_grpc
from proxy_nas_svc.jobs import JOB_KIND, SearchRunner

if TYPE_CHECKING:
    from bitmesh.client import Client
    from bitmesh.formats import QuantOption
    from proxy_nas_svc.spec import SearchRequest

SERVICE_NAME = proxy_nas_pb2.DESCRIPTOR.services_by_name["ProxyNasService"].full_name


def job_id_for(request_id: str, tenant: str = DEFAULT_TENANT) -> str:
    """A new id, or a stable one for an idempotency key (the caller's own:
    the tenant is hashed with it, except ``default``'s, as before tenants)."""
    if not request_id:
        return new_job_id(JOB_KIND)
    key = request_id if tenant == DEFAULT_TENANT else f"{tenant}\x00{request_id}"
    return f"{JOB_KIND}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class ProxyNasServicer(proxy_nas_pb2_grpc.ProxyNasServiceServicer):
    def __init__(
        self,
        store: JobStore,
        runner: SearchRunner,
        max_open_jobs: int,
        solver_client: Callable[[], Client],
        max_tenant_jobs: int | None = None,
    ) -> None:
        """``max_tenant_jobs``: one tenant's open searches
        (BITMESH_MAX_JOBS_PER_TENANT; unset, only ``max_open_jobs`` caps)."""
        self.store = store
        self.runner = runner
        self.max_open_jobs = max_open_jobs
        self.max_tenant_jobs = max_tenant_jobs
        self.solver_client = solver_client

    def _config(
        self, request: proxy_nas_pb2.StartSearchRequest
    ) -> tuple[dict[str, QuantOption], dict[str, Any]]:
        from google.protobuf.json_format import MessageToDict

        from bitmesh.rpc.convert import config_from_pb
        from bitmesh.rpc.convert_ml import model_spec_from_pb
        from proxy_nas_svc.validate import solve_budgets

        target = request.WhichOneof("target")
        if target == "config" or (target is None and request.HasField("default_option")):
            config = config_from_pb(request.config)
            if not config and not request.HasField("default_option"):
                raise InvalidArgument(
                    "the configuration names no layer: give layers, a default option or budgets"
                )
            return config, {}
        if target == "budgets":
            candidates = [option_from_pb(o) for o in request.candidates]
            with self.solver_client() as client:
                config = solve_budgets(
                    client, model_spec_from_pb(request.model), request.budgets, candidates
                )
            return config, MessageToDict(request.budgets, preserving_proto_field_name=True)
        raise InvalidArgument(
            "the search needs a quantization configuration: set config or default_option, "
            "or budgets to solve one"
        )

    def StartSearch(
        self, request: proxy_nas_pb2.StartSearchRequest, context: grpc.ServicerContext
    ) -> common_pb2.JobRef:
        from proxy_nas_svc.convert import search_from_pb
        from proxy_nas_svc.validate import validate_search

        tenant = current_tenant()
        job_id = job_id_for(request.request_id, tenant)
        if request.request_id:
            try:
                return common_pb2.JobRef(job_id=owned_job(self.store, job_id, tenant).job_id)
            except NotFound:
                pass
        # Cheap checks first: a bad space is refused before the model loads.
        search_from_pb(request, {})
        config, budgets = self._config(request)
        search = search_from_pb(request, config, budgets)
        if request.HasField("default_option"):
            search = replace(search, default_option=option_from_pb(request.default_option))
        validate_search(search)
        record = create_admitted(
            self.store,
            JobRecord(
                job_id=job_id,
                kind=JOB_KIND,
                request={
                    "search": search.to_dict(),
                    "config_labels": config_labels(search),
                },
                tenant=tenant,
            ),
            self.max_open_jobs,
            self.max_tenant_jobs,
        )
        self.runner.start(record.job_id)
        return common_pb2.JobRef(job_id=record.job_id)

    def WatchSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[proxy_nas_pb2.SearchEvent]:
        from proxy_nas_svc.convert import event_to_pb

        yield from watch_events(self.store, request.job_id, context, event_to_pb)

    def GetSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> proxy_nas_pb2.SearchResult:
        from proxy_nas_svc.convert import result_to_pb

        record = owned_job(self.store, request.job_id)
        events = [] if record.result is not None else self.store.events_since(request.job_id, 0)
        return result_to_pb(record, events)

    def CancelSearch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> common_pb2.JobStatus:
        return job_status_to_pb(cancel_owned(self.store, request.job_id))

    def ListSearches(
        self, request: common_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> common_pb2.ListJobsResponse:
        return list_jobs(self.store, JOB_KIND, request)


def config_labels(search: SearchRequest) -> dict[str, str]:
    """The configuration every trial trains, as layer -> option key (``*``: the rest)."""
    labels = {k: v.key for k, v in search.config.items()}
    if search.default_option is not None:
        labels["*"] = search.default_option.key
    return labels


def build(
    settings: Settings,
) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    from bitmesh.artifacts import ArtifactStore
    from bitmesh.client import Client
    from bitmesh.jobs.lease import open_lease
    from bitmesh.jobs.retry import RetryPolicy
    from bitmesh.jobs.sweeper import HeldLeases, Sweeper
    from bitmesh.rpc.auth import as_caller
    from proxy_nas_svc.runs import CeleryBackend
    from proxy_nas_svc.study import open_storage
    from trainer_svc.public import make_celery

    store = open_job_store(settings.redis_url, settings.artifact_root, PROXY_NAS.store)
    artifacts = ArtifactStore(settings.artifact_root)
    celery = make_celery(settings)
    leases = HeldLeases(
        open_lease(settings.redis_url, settings.artifact_root, PROXY_NAS.store),
        settings.job_lease_seconds,
    )
    from bitmesh.jobs.plumbing import PROXY_NAS_TRIALS
    from bitmesh.rpc.metrics import broker_queue_length
    from proxy_nas_svc.coordinator import CoordinatorOptions

    run_lease = open_lease(settings.redis_url, settings.artifact_root, PROXY_NAS_TRIALS.store)
    runner = SearchRunner(
        store,
        backend_for=lambda job_id: CeleryBackend(
            celery,
            artifacts,
            job_id,
            lease=run_lease,
            queue_length=lambda: broker_queue_length(settings, PROXY_NAS_TRIALS.queue_name),
            tenant=store.get(job_id).tenant,  # its runs go to its tenant's store
        ),
        options=CoordinatorOptions(requeue_after_s=settings.requeue_after_seconds),
        storage_factory=lambda: open_storage(settings.redis_url, settings.artifact_root),
        leases=leases,
        retry=RetryPolicy(window_s=settings.store_retry_seconds),
    )
    servicer = ProxyNasServicer(
        # The solver is called on the caller's behalf, with its token (its tenant).
        store,
        runner,
        settings.max_concurrent_jobs,
        lambda: Client(as_caller(settings)),
        settings.tenant_job_cap,
    )
    sweeper = Sweeper(store, leases, PROXY_NAS.kinds, runner.end_orphan, settings.sweep_seconds)
    sweeper.start()
    return (
        [lambda s: proxy_nas_pb2_grpc.add_ProxyNasServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        [sweeper.stop, runner.shutdown, close_on_stop],
    )
