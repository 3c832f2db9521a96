"""Garbage collection of the artifact store: mark and sweep (``bitmesh gc``).

Blobs are content-addressed and shared (two jobs that write the same bytes
hold one blob), so no writer can delete one when it is done with it. The
collector decides instead, from everything that can reference a blob:

1. Expired job records are purged from every job store (retention, see
   :mod:`bitmesh.jobs.store`).
2. The checkpoints of jobs that ended (or whose record expired) lose their
   named reference: a checkpoint only serves a job that may still resume.
3. Mark: the blob behind every named reference, every sha256 that appears in
   a live job record (request or result), and, transitively, every sha256
   inside a marked JSON blob (a result names its weights and metrics blobs).
4. Sweep: every unmarked blob older than ``min_age_seconds`` is deleted, and
   temporary files of writes abandoned that long ago.

Tenants (:mod:`bitmesh.tenants`): each tenant's namespace under
``<root>/tenants/`` is a store of its own, collected in turn like the root
(``default``'s). Every store is marked from the live records of every tenant:
a sha256 that any job names keeps its blob wherever it lies, which can only
keep more, never delete what a job still needs.

Why the age guard: a writer stores a blob first and its reference after, and
a blob stored again is only touched (its bytes are already there), so a blob
younger than the guard may be about to be referenced; the mtime is read
again just before a delete. A running job's checkpoint is referenced by name
and its record is live, so it is always marked; a store that cannot be read
aborts the collection (UNAVAILABLE) before anything is deleted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import NotFound
from bitmesh.jobs.plumbing import ALL_PLUMBING, JobPlumbing
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.settings import Settings
from bitmesh.tenants import TENANT_NAME_PATTERN, TENANTS_FOLDER

_SHA_IN_TEXT = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
# A marked blob is scanned for further references only when it is JSON and
# no larger than this (results and refs are small; weights are not JSON).
MAX_SCANNED_BYTES = 64 * 1024 * 1024
# Every record of a store is read (list() pages by newest first).
_ALL = 10**9


@dataclass(frozen=True)
class GcReport:
    """What one collection did (or, with ``dry_run``, would do)."""

    jobs_expired: int
    checkpoints_released: int
    blobs_marked: int
    blobs_kept_young: int
    blobs_deleted: int
    bytes_freed: int
    temporaries_deleted: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shas_in(data: bytes) -> set[str]:
    return {m.decode() for m in _SHA_IN_TEXT.findall(data)}


def _record_shas(records: Iterable[JobRecord]) -> set[str]:
    found: set[str] = set()
    for record in records:
        found |= _shas_in(json.dumps({"request": record.request, "result": record.result}).encode())
    return found


def _release_checkpoints(
    artifacts: ArtifactStore,
    stores: Mapping[str, JobStore],
    live: Mapping[str, Mapping[str, JobRecord]],
    dry_run: bool,
) -> int:
    """Drop the checkpoint refs of jobs that ended or whose record is gone."""
    released = 0
    by_namespace: dict[str, JobPlumbing] = {
        p.checkpoints: p for p in ALL_PLUMBING if p.checkpoints is not None
    }
    for ref in list(artifacts.refs()):
        plumbing = by_namespace.get(ref.namespace)
        if plumbing is None:
            continue
        record = live[plumbing.store].get(ref.key)
        if record is None:  # created after the snapshot, or expired: ask again
            try:
                record = stores[plumbing.store].get(ref.key)
            except NotFound:
                record = None
        if record is None or record.state.terminal:
            released += 1
            if not dry_run:
                artifacts.delete_ref(ref.namespace, ref.key)
    return released


def _mark(artifacts: ArtifactStore, roots: set[str]) -> set[str]:
    """Every blob reachable from ``roots`` through JSON blobs."""
    marked: set[str] = set()
    pending = list(roots)
    while pending:
        sha = pending.pop()
        if sha in marked:
            continue
        marked.add(sha)
        try:
            start, size = artifacts.head(sha, 64)
        except NotFound:
            continue  # a sha256 in some text that names no blob here
        if size > MAX_SCANNED_BYTES or start.lstrip()[:1] not in (b"{", b"["):
            continue  # weights, checkpoints: read no further than their first bytes
        pending.extend(_shas_in(artifacts.get_bytes(sha)) - marked)
    return marked


def collect(
    artifacts: ArtifactStore,
    stores: Mapping[str, JobStore],
    min_age_seconds: float,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """One mark-and-sweep over ``artifacts``, ``stores`` keyed by store name."""
    expired, live = _expire_and_list(stores, dry_run)
    return _sweep(artifacts, stores, live, expired, min_age_seconds, dry_run, clock)


def _expire_and_list(
    stores: Mapping[str, JobStore], dry_run: bool
) -> tuple[int, dict[str, dict[str, JobRecord]]]:
    """Expire finished jobs past retention (not in a dry run); then the
    records left, by store name and job id: the snapshot a sweep marks from."""
    expired = 0 if dry_run else sum(store.purge_expired() for store in stores.values())
    live = {name: {r.job_id: r for r in store.list(None, _ALL)} for name, store in stores.items()}
    return expired, live


def _sweep(
    artifacts: ArtifactStore,
    stores: Mapping[str, JobStore],
    live: Mapping[str, Mapping[str, JobRecord]],
    expired: int,
    min_age_seconds: float,
    dry_run: bool,
    clock: Callable[[], float],
) -> GcReport:
    """Release, mark and sweep ``artifacts`` against the ``live`` snapshot."""
    released = _release_checkpoints(artifacts, stores, live, dry_run)
    released_keys = set()
    if dry_run:  # what a real run would have left referenced
        released_keys = {
            (p.checkpoints, job_id)
            for p in ALL_PLUMBING
            if p.checkpoints is not None
            for job_id, record in live[p.store].items()
            if record.state.terminal
        }
    roots = {r.sha256 for r in artifacts.refs() if (r.namespace, r.key) not in released_keys}
    roots |= _record_shas(r for records in live.values() for r in records.values())
    marked = _mark(artifacts, roots)

    young = deleted = freed = temporaries = 0
    cutoff = clock() - min_age_seconds
    for blob in list(artifacts.blobs()):
        if blob.sha256 in marked:
            continue
        if blob.mtime > cutoff:
            young += 1
            continue
        if blob.sha256 is None:
            temporaries += 1
            if not dry_run:
                artifacts.remove_path(blob.path)
            continue
        now_mtime = artifacts.blob_mtime(blob.sha256)  # stored again since the listing?
        if now_mtime is None or now_mtime > cutoff:
            young += now_mtime is not None
            continue
        deleted += 1
        freed += blob.size_bytes
        if not dry_run:
            artifacts.delete(blob.sha256)
    return GcReport(
        jobs_expired=expired,
        checkpoints_released=released,
        blobs_marked=len(marked),
        blobs_kept_young=young,
        blobs_deleted=deleted,
        bytes_freed=freed,
        temporaries_deleted=temporaries,
        dry_run=dry_run,
    )


def tenant_stores(artifacts: ArtifactStore) -> list[ArtifactStore]:
    """The store of every tenant namespace found under ``artifacts``' root."""
    base = f"{artifacts.root}/{TENANTS_FOLDER}"
    if not artifacts.fs.exists(base):
        return []
    names = sorted(
        str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
        for info in artifacts.fs.ls(base, detail=True)
        if info.get("type") == "directory"
    )
    return [artifacts.for_tenant(name) for name in names if re.match(TENANT_NAME_PATTERN, name)]


def collect_all(
    artifacts: ArtifactStore,
    stores: Mapping[str, JobStore],
    min_age_seconds: float,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """:func:`collect` over the root store and then every tenant's, summed.

    The job stores are shared by every tenant, so they are expired and
    listed once for all the sweeps (they were once per tenant)."""
    expired, live = _expire_and_list(stores, dry_run)
    reports = [
        _sweep(store, stores, live, 0, min_age_seconds, dry_run, clock)
        for store in (artifacts, *tenant_stores(artifacts))
    ]
    reports[0] = replace(reports[0], jobs_expired=expired)
    totals = {
        name: sum(getattr(r, name) for r in reports)
        for name in GcReport.__dataclass_fields__
        if name != "dry_run"
    }
    return GcReport(**totals, dry_run=dry_run)


def open_stores(settings: Settings) -> dict[str, JobStore]:
    """Every job store the mesh declares (:data:`ALL_PLUMBING`), by store name."""
    names = dict.fromkeys(p.store for p in ALL_PLUMBING)
    return {
        name: open_job_store(
            settings.redis_url,
            settings.artifact_root,
            name,
            retention_seconds=settings.job_retention_seconds,
        )
        for name in names
    }


def collect_mesh(settings: Settings, dry_run: bool = False) -> GcReport:
    """``bitmesh gc``: collect the artifact store the settings name (every
    tenant's namespace in it)."""
    return collect_all(
        ArtifactStore(settings.artifact_root),
        open_stores(settings),
        settings.gc_min_blob_age_seconds,
        dry_run=dry_run,
    )
