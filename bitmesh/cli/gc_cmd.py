"""`bitmesh gc`: expire finished jobs and delete unreferenced blobs."""

from __future__ import annotations

import argparse

from bitmesh.cli.common import console, dump_json
from bitmesh.gc import collect_mesh
from bitmesh.settings import load_settings


def cmd_gc(args: argparse.Namespace) -> int:
    settings = load_settings(gc_min_blob_age_seconds=args.min_age)
    report = collect_mesh(settings, dry_run=args.dry_run)
    if args.json:
        dump_json(report.to_dict())
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    console.print(
        f"gc: {report.jobs_expired} expired jobs purged, "
        f"{report.checkpoints_released} finished jobs' checkpoints released; "
        f"{report.blobs_marked} blobs referenced, {report.blobs_kept_young} too young to judge; "
        f"{verb} {report.blobs_deleted} blobs ({report.bytes_freed} bytes) "
        f"and {report.temporaries_deleted} abandoned temporary files"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gc = sub.add_parser(
        "gc",
        help="purge expired jobs, release finished jobs' checkpoints, delete unreferenced blobs",
    )
    gc.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    gc.add_argument(
        "--min-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="spare blobs younger than this (default BITMESH_GC_MIN_BLOB_AGE_SECONDS, 3600)",
    )
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=cmd_gc)
