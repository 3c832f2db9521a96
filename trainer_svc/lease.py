"""The trainer's job leases: :mod:`bitmesh.jobs.lease`, which every service's
long jobs now share (the sensitivity and proxy NAS services hold them too)."""

from __future__ import annotations

from bitmesh.jobs.lease import Lease, LocalLease, RedisLease, SqliteLease, open_lease

__all__ = ["Lease", "LocalLease", "RedisLease", "SqliteLease", "open_lease"]
