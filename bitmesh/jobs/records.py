"""What a job is: an id, a kind, a state machine, progress, a result.

The same record is stored in Redis (cluster, Celery) or SQLite (embedded,
cross-process on one machine), so restarting a service loses nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from bitmesh.tenants import DEFAULT_TENANT


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def new_job_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class JobRecord:
    """One job's durable state. ``result`` is JSON, set once it succeeded."""

    job_id: str
    kind: str
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    stage: str = ""
    message: str = ""
    error: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    request: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    # Who owns the job (bitmesh/tenants.py): only this tenant's calls see it,
    # and its runner (a worker, a service thread) uses this tenant's files.
    # Records written before tenants existed read as "default".
    tenant: str = DEFAULT_TENANT
    #: How many times a runner started it (``execute_job`` counts): more
    #: than one when its runner died and it was resumed.
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**{**data, "state": JobState(data["state"])})

    def with_changes(self, **changes: Any) -> JobRecord:
        return replace(self, **changes, updated=time.time())


def final_event(record: JobRecord) -> dict[str, Any]:
    """The last event of a job that ended as ``record`` says: one shape for
    every service (:mod:`bitmesh.jobs.ending`)."""
    return {
        "state": record.state.value,
        "progress": record.progress,
        "stage": record.stage,
        "message": record.error or record.message,
        "error": record.error,
    }
