"""The sensitivity job: stored reports answer repeats, remembered requests skip loading."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from bitmesh.artifacts import ArtifactStore
from bitmesh.data.datasets import DatasetSpec
from bitmesh.formats import parse_option
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.runner import JobContext
from bitmesh.jobs.store import SqliteJobStore
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec
from sensitivity_svc.jobs import prepare, run

pytestmark = pytest.mark.unit

ESTIMATOR: dict[str, Any] = {
    "target_relative_se": 0.3,
    "max_samples": 20,
    "seed": 2,
    "num_batches": 1,
}


def _context(tmp_path: Path) -> JobContext:
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    record = store.create(JobRecord(job_id="sensitivity-1", kind="sensitivity", request={}))
    return JobContext(store, record.job_id, threading.Event())


def _prepare(weights: Path, artifacts: ArtifactStore, formats: list[str]) -> Any:
    return prepare(
        ModelSpec(
            source="architecture",
            name_or_path="digits_cnn",
            input_shape=(1, 8, 8),
            weights_path=str(weights),
        ),
        DatasetSpec(kind="digits"),
        [parse_option(f) for f in formats],
        ESTIMATOR,
        32,
        False,
        artifacts,
    )


def test_a_remembered_request_is_answered_without_loading(tmp_path: Path) -> None:
    weights = tmp_path / "digits.pt"
    torch.manual_seed(0)
    torch.save(DigitsCNN().state_dict(), weights)
    artifacts = ArtifactStore(str(tmp_path / "art"))

    first = _prepare(weights, artifacts, ["int4", "int8"])
    assert first.model is not None and first.stored is None
    computed = run(first, artifacts, _context(tmp_path / "a"))
    assert not computed["cached"]

    # Same request: no model loaded, the stored report answers.
    again = _prepare(weights, artifacts, ["int8"])
    assert again.model is None and again.key == first.key
    answer = run(again, artifacts, _context(tmp_path / "b"))
    assert answer["cached"] and answer["report"]["options"] == ["int8/int8"]
    traces = [layer["trace"] for layer in computed["report"]["layers"]]
    assert [layer["trace"] for layer in answer["report"]["layers"]] == traces

    # A new option needs the weights: loaded, and priced from the stored traces.
    wider = _prepare(weights, artifacts, ["int8", "e4m3"])
    assert wider.model is not None and wider.key == first.key
    priced = run(wider, artifacts, _context(tmp_path / "c"))
    assert priced["cached"] and priced["report"]["options"] == ["int8/int8", "e4m3/e4m3"]

    # Different weights in the same file: the request is not recognised.
    torch.manual_seed(1)
    torch.save(DigitsCNN().state_dict(), weights)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = _prepare(weights, artifacts, ["int8"])
    assert changed.model is not None and changed.key != first.key


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_there_is_none_is_refused_before_a_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitmesh.errors import FailedPrecondition

    weights = tmp_path / "digits.pt"
    torch.save(DigitsCNN().state_dict(), weights)
    monkeypatch.setenv("BITMESH_DEVICE", "cuda:0")
    with pytest.raises(FailedPrecondition, match="BITMESH_DEVICE asks for cuda:0"):
        _prepare(weights, ArtifactStore(str(tmp_path / "art")), ["int8"])
    monkeypatch.setenv("BITMESH_DEVICE", "cpu")
    prepared = _prepare(weights, ArtifactStore(str(tmp_path / "art")), ["int8"])
    assert prepared.model is not None
    assert {p.device.type for p in prepared.model.parameters()} == {"cpu"}
    assert {x.device.type for batch in prepared.batches for x in batch} == {"cpu"}
