"""Shared servicer pieces for the job calls of services whose work has not landed."""

from __future__ import annotations

from bitmesh.errors import Unimplemented
from bitmesh.jobs.store import JobStore
from bitmesh.jobs.tenancy import list_owned
from bitmesh.rpc.convert import job_status_to_pb
from bitmesh.v1 import common_pb2 as pb


def list_jobs(
    store: JobStore, kind: str | None, request: pb.ListJobsRequest
) -> pb.ListJobsResponse:
    """The caller's tenant's newest jobs (``limit``, default 100, at most 1000)."""
    limit = request.limit if request.limit > 0 else 100
    return pb.ListJobsResponse(
        jobs=[job_status_to_pb(r) for r in list_owned(store, kind, min(limit, 1000))]
    )


def not_landed(what: str, issue: str) -> Unimplemented:
    return Unimplemented(f"{what} is not implemented yet: it lands with the issue '{issue}'")
