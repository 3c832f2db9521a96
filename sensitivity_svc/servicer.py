"""gRPC edge of the sensitivity service: converts and maps errors, nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict

from bitmesh.artifacts import ArtifactStore
from bitmesh.jobs.lease import open_lease
from bitmesh.jobs.plumbing import SENSITIVITY
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.retry import RetryPolicy
from bitmesh.jobs.runner import ThreadJobRunner
from bitmesh.jobs.store import JobStore, open_job_store, transition
from bitmesh.jobs.sweeper import HeldLeases, Sweeper
from bitmesh.jobs.tenancy import owned_job
from bitmesh.models.sandbox import close_on_stop
from bitmesh.rpc.convert import (
    costs_to_pb,
    job_event_status_to_pb,
    job_status_to_pb,
    option_to_pb,
    options_from_pb,
)
from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb
from bitmesh.rpc.job_servicer import list_jobs
from bitmesh.rpc.jobs import watch_events
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.tenants import current_tenant
from bitmesh.v1 import common_pb2, sensitivity_pb2, sensitivity_pb2_grpc
from sensitivity_svc.convert import report_to_pb, settings_from_pb
from sensitivity_svc.isolated import close_spare
from sensitivity_svc.jobs import prepare, run
from sensitivity_svc.layer_table import layer_table
from sensitivity_svc.report import SensitivityReport

SERVICE_NAME = sensitivity_pb2.DESCRIPTOR.services_by_name["SensitivityService"].full_name
KIND = SENSITIVITY.kinds[0]


def layer_info_pb(layer: object) -> common_pb2.LayerInfo:
    return common_pb2.LayerInfo(
        name=layer.name,  # type: ignore[attr-defined]
        kind=layer.kind,  # type: ignore[attr-defined]
        parameters=layer.parameters,  # type: ignore[attr-defined]
        macs=layer.macs,  # type: ignore[attr-defined]
        weight_shape=list(layer.weight_shape),  # type: ignore[attr-defined]
        output_channels=layer.output_channels,  # type: ignore[attr-defined]
    )


class SensitivityServicer(sensitivity_pb2_grpc.SensitivityServiceServicer):
    def __init__(self, store: JobStore, runner: ThreadJobRunner, artifacts: ArtifactStore) -> None:
        self.store = store
        self.runner = runner
        self.artifacts = artifacts

    def ListLayers(
        self, request: sensitivity_pb2.ListLayersRequest, context: grpc.ServicerContext
    ) -> sensitivity_pb2.ListLayersResponse:
        options = options_from_pb(request.options)
        table = layer_table(model_spec_from_pb(request.model), options)
        return sensitivity_pb2.ListLayersResponse(
            layers=[
                sensitivity_pb2.LayerWithCosts(
                    layer=layer_info_pb(layer),
                    options=[
                        sensitivity_pb2.OptionCosts(
                            option=option_to_pb(o),
                            option_key=o.key,
                            costs=costs_to_pb(table.costs[layer.name][o.key]),
                        )
                        for o in options
                    ],
                )
                for layer in table.layers
            ],
            total_parameters=table.total_parameters,
            total_macs=table.total_macs,
            weight_parameters=table.weight_parameters,
            weight_coverage=table.weight_coverage,
            model_hash=table.model_hash,
        )

    def _prepare(
        self, request: sensitivity_pb2.StartAnalysisRequest, artifacts: ArtifactStore
    ) -> Any:
        return prepare(
            model_spec_from_pb(request.model),
            dataset_spec_from_pb(request.dataset),
            options_from_pb(request.options),
            settings_from_pb(request.settings),
            request.dataset.batch_size,
            request.activation_sensitivity,
            artifacts,
        )

    def resume(self, record: JobRecord) -> bool:
        """Run an orphaned analysis again from its stored request (the sweeper
        holds its lease). Traces are not checkpointed, so it starts over; a
        request that no longer prepares (a file gone) ends FAILED with why."""
        request = ParseDict(record.request["request"], sensitivity_pb2.StartAnalysisRequest())
        estimator = record.request["estimator"]
        artifacts = self.artifacts.for_tenant(record.tenant)
        self.store.update(
            record.job_id,
            lambda r: transition(
                r,
                stage="resuming",
                message="the service running it stopped; starting it over",
            ),
        )
        self.runner.resume(
            record.job_id,
            lambda ctx: {
                **run(self._prepare(request, artifacts), artifacts, ctx),
                "estimator": estimator,
            },
        )
        return True

    def StartAnalysis(
        self, request: sensitivity_pb2.StartAnalysisRequest, context: grpc.ServicerContext
    ) -> common_pb2.JobRef:
        estimator = settings_from_pb(request.settings)
        # The caller's own store: its cached reports, never another tenant's.
        tenant = current_tenant()
        artifacts = self.artifacts.for_tenant(tenant)
        prepared = self._prepare(request, artifacts)
        record = self.runner.submit(
            {
                "request": MessageToDict(request, preserving_proto_field_name=True),
                "estimator": estimator,
            },
            lambda ctx: {**run(prepared, artifacts, ctx), "estimator": estimator},
            tenant=tenant,
        )
        return common_pb2.JobRef(job_id=record.job_id)

    def WatchAnalysis(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[sensitivity_pb2.SensitivityEvent]:
        def to_event(record: JobRecord, event: dict[str, Any]) -> sensitivity_pb2.SensitivityEvent:
            return sensitivity_pb2.SensitivityEvent(
                status=job_event_status_to_pb(record, event),
                layers=[sensitivity_pb2.LayerEstimate(**item) for item in event.get("layers", [])],
            )

        yield from watch_events(self.store, request.job_id, context, to_event)

    def GetAnalysis(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> sensitivity_pb2.AnalysisResult:
        record = owned_job(self.store, request.job_id)
        result = sensitivity_pb2.AnalysisResult(status=job_status_to_pb(record))
        if record.result is not None:
            report = SensitivityReport.from_dict(record.result["report"])
            result.report.CopyFrom(
                report_to_pb(
                    report,
                    record.result["estimator"],
                    record.result["cached"],
                    record.result["artifact"],
                )
            )
            result.report.seconds = float(record.result.get("seconds", report.seconds))
        return result

    def CancelAnalysis(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> common_pb2.JobStatus:
        owned_job(self.store, request.job_id)  # another tenant's job is NOT_FOUND
        return job_status_to_pb(self.runner.cancel(request.job_id))

    def ListAnalyses(
        self, request: common_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> common_pb2.ListJobsResponse:
        return list_jobs(self.store, KIND, request)


def build(
    settings: Settings,
) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    store = open_job_store(settings.redis_url, settings.artifact_root, SENSITIVITY.store)
    leases = HeldLeases(
        open_lease(settings.redis_url, settings.artifact_root, SENSITIVITY.store),
        settings.job_lease_seconds,
    )
    runner = ThreadJobRunner(
        store,
        KIND,
        settings.max_concurrent_jobs,
        leases=leases,
        retry=RetryPolicy(window_s=settings.store_retry_seconds),
        max_attempts=settings.job_max_attempts,
        max_per_tenant=settings.tenant_job_cap,
    )
    servicer = SensitivityServicer(store, runner, ArtifactStore(settings.artifact_root))
    sweeper = Sweeper(store, leases, SENSITIVITY.kinds, servicer.resume, settings.sweep_seconds)
    sweeper.start()
    return (
        [lambda s: sensitivity_pb2_grpc.add_SensitivityServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        [sweeper.stop, runner.shutdown, close_on_stop, close_spare],
    )
