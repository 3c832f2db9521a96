"""Checkpoints of running jobs in the artifact store, keyed by job id.

A checkpoint holds tensors and plain containers only (model and optimiser
state, policy, RNG states, step, metrics), written with ``torch.save`` and read
back with ``weights_only=True``: a checkpoint is data, and reading it can
never run code. The blob is content-addressed; the named reference
``trainer-checkpoints/<job id>`` points at the latest one, so a worker that
picks up a redelivered job finds where the dead one stopped. Once the job
has ended, ``bitmesh gc`` (bitmesh/gc.py) removes the reference and the blobs.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from bitmesh.artifacts import Artifact, ArtifactStore
from bitmesh.errors import FailedPrecondition
from bitmesh.jobs.plumbing import TRAINER

NAMESPACE = TRAINER.checkpoint_namespace
MEDIA_TYPE = "application/vnd.bitmesh.checkpoint+torch"


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """Read a checkpoint without unpickling anything but tensors and plain data."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types on foreign or corrupt data
        raise FailedPrecondition(
            f"checkpoint is not a weights-only torch.save file ({type(exc).__name__}); "
            "it cannot be resumed"
        ) from exc
    if not isinstance(state, dict):
        raise FailedPrecondition(f"checkpoint holds a {type(state).__name__}, not a dict")
    return state


def save(artifacts: ArtifactStore, job_id: str, state: dict[str, Any], step: int) -> Artifact:
    """Store the checkpoint, then move the job's reference to it (atomic rename)."""
    artifact = artifacts.put_bytes(to_bytes(state), media_type=MEDIA_TYPE)
    artifacts.set_ref(
        NAMESPACE,
        job_id,
        {"sha256": artifact.sha256, "step": step, "size_bytes": artifact.size_bytes},
    )
    return artifact


def latest(artifacts: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    """The reference to the job's latest checkpoint ({sha256, step, size_bytes}), if any."""
    ref = artifacts.get_ref(NAMESPACE, job_id)
    return dict(ref) if ref else None


def load(artifacts: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    ref = latest(artifacts, job_id)
    if ref is None:
        return None
    return from_bytes(artifacts.get_bytes(ref["sha256"]))
