"""Keepalive, declared once for both ends of every channel.

Why: a Watch stream lives as long as its job. Without pings, a client whose
network went away leaves its stream (and the server thread serving it) open
until TCP gives up, hours later; a client whose server died waits for ever.
With them, each end finds a dead peer within ``keepalive + timeout`` seconds.

The two ends must agree: a server refuses pings that come more often than it
allows (two strikes, then GOAWAY ``too_many_pings``, which ends every call on
the connection). So the server accepts pings three times as often as clients
send them, and both read the interval from the same settings.
"""

from __future__ import annotations

from typing import Any

from bitmesh.settings import Settings

__all__ = ["client_keepalive_options", "server_keepalive_options"]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def client_keepalive_options(settings: Settings) -> list[tuple[str, Any]]:
    """Ping every ``keepalive_seconds`` while a call is open; no pings on an
    idle channel (a server may count those as abuse)."""
    return [
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 0),
        # A quiet Watch sends no data for minutes; keep pinging through it.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_keepalive_options(settings: Settings) -> list[tuple[str, Any]]:
    """Ping clients as often as they ping us, and accept their pings down to
    a third of that interval."""
    return [
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # The server's floor for the interval between a client's pings
        # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS).
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.keepalive_seconds / 3)),
    ]
