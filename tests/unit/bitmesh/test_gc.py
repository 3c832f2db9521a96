"""`bitmesh gc`: unreferenced blobs go, referenced and young ones stay."""

from __future__ import annotations

import os

import pytest

from bitmesh.artifacts import ArtifactStore
from bitmesh.cli.main import main
from bitmesh.errors import NotFound
from bitmesh.gc import collect, collect_all
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.store import SqliteJobStore, open_job_store, transition

pytestmark = pytest.mark.unit

NOW = 2_000_000_000.0


def _age(artifacts: ArtifactStore, sha: str, seconds_old: float) -> None:
    path = artifacts.local_path(sha)
    os.utime(path, (NOW - seconds_old, NOW - seconds_old))


def _exists(artifacts: ArtifactStore, sha: str) -> bool:
    try:
        artifacts.get_bytes(sha)
    except NotFound:
        return False
    return True


def test_unreferenced_blob_removed_referenced_kept(tmp_path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    orphan = artifacts.put_bytes(b"nobody points at me")
    young = artifacts.put_bytes(b"just written, reference on its way")
    weights = artifacts.put_bytes(b"weights named by a stored result")
    result_ref = artifacts.set_ref(
        "trainer-results", "qat-1", {"weights": {"sha256": weights.sha256}}
    )
    by_record = artifacts.put_bytes(b"named in a live job's result")
    store.create(JobRecord(job_id="qat-2", kind="qat"))
    store.update(
        "qat-2",
        lambda r: transition(r, state=JobState.SUCCEEDED, result={"uri": by_record.uri}),
    )
    for artifact in (orphan, weights, result_ref, by_record):
        _age(artifacts, artifact.sha256, seconds_old=7200)
    _age(artifacts, young.sha256, seconds_old=10)

    dry = collect(
        artifacts, {"trainer": store}, min_age_seconds=3600, dry_run=True, clock=lambda: NOW
    )
    assert dry.blobs_deleted == 1 and _exists(artifacts, orphan.sha256)

    report = collect(artifacts, {"trainer": store}, min_age_seconds=3600, clock=lambda: NOW)

    assert report.blobs_deleted == 1 and report.bytes_freed == orphan.size_bytes
    assert not _exists(artifacts, orphan.sha256)
    for kept in (young, weights, result_ref, by_record):
        assert _exists(artifacts, kept.sha256)
    assert artifacts.get_ref("trainer-results", "qat-1") == {"weights": {"sha256": weights.sha256}}


def test_every_tenants_store_is_collected(tmp_path) -> None:
    """A tenant's namespace is a store of its own under the root: its
    unreferenced old blobs go, the blobs its jobs name stay."""
    root = ArtifactStore(str(tmp_path / "artifacts"))
    alice = root.for_tenant("alice")
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    orphan = alice.put_bytes(b"alice's, named by nothing")
    weights = alice.put_bytes(b"alice's weights, named by her job")
    store.create(JobRecord(job_id="qat-3", kind="qat", tenant="alice"))
    store.update(
        "qat-3",
        lambda r: transition(r, state=JobState.SUCCEEDED, result={"uri": weights.uri}),
    )
    for artifact in (orphan, weights):
        _age(alice, artifact.sha256, seconds_old=7200)

    report = collect_all(root, {"trainer": store}, min_age_seconds=3600, clock=lambda: NOW)

    assert report.blobs_deleted == 1 and report.bytes_freed == orphan.size_bytes
    assert not _exists(alice, orphan.sha256)
    assert _exists(alice, weights.sha256)


def test_storing_a_blob_again_makes_it_young(tmp_path) -> None:
    """A writer that stores existing bytes and is about to reference them
    must not lose them to a collection in between."""
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    blob = artifacts.put_bytes(b"shared bytes")
    os.utime(artifacts.local_path(blob.sha256), (1.0, 1.0))
    artifacts.put_bytes(b"shared bytes")
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    collect(artifacts, {"trainer": store}, min_age_seconds=3600)
    assert _exists(artifacts, blob.sha256)


def test_bitmesh_gc_command(tmp_path, monkeypatch, capsys) -> None:
    root = tmp_path / "artifacts"
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("BITMESH_REDIS_URL", raising=False)
    monkeypatch.setenv("BITMESH_ARTIFACT_ROOT", str(root))
    artifacts = ArtifactStore(str(root))
    orphan = artifacts.put_bytes(b"collect me")
    kept = artifacts.set_ref("sensitivity", "k", {"x": 1})
    running = open_job_store(None, str(root), "trainer")
    running.create(JobRecord(job_id="qat-r", kind="qat"))

    assert main(["gc", "--min-age", "0", "--json"]) == 0

    assert '"blobs_deleted": 1' in capsys.readouterr().out
    assert not _exists(artifacts, orphan.sha256)
    assert _exists(artifacts, kept.sha256)
    assert running.get("qat-r").state is JobState.QUEUED
