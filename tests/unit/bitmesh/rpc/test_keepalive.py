"""Both ends of a channel read keepalive from one declaration, and agree."""

from __future__ import annotations

import pytest

from bitmesh.rpc.keepalive import client_keepalive_options, server_keepalive_options
from bitmesh.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seconds", [0.5, 30.0, 600.0])
def test_the_server_accepts_the_pings_clients_send(seconds: float) -> None:
    """A server that refuses pings more frequent than its floor sends GOAWAY
    ``too_many_pings`` after two strikes, ending every call on the
    connection: the floor must sit below the clients' interval."""
    settings = Settings(keepalive_seconds=seconds, keepalive_timeout_seconds=5)
    client = dict(client_keepalive_options(settings))
    server = dict(server_keepalive_options(settings))
    assert client["grpc.keepalive_time_ms"] == int(seconds * 1000)
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    # Streams can be quiet for minutes: neither end stops pinging for lack of data.
    assert client["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.keepalive_timeout_ms"] == client["grpc.keepalive_timeout_ms"] == 5000


def test_keepalive_settings_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Settings(keepalive_seconds=0)
    with pytest.raises(ValueError):
        Settings(max_concurrent_rpcs=0)


def test_every_client_channel_carries_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    from bitmesh.client import Client

    seen: list[dict[str, object]] = []
    real = grpc.insecure_channel

    def spy(address: str, options: list[tuple[str, object]]) -> grpc.Channel:
        seen.append(dict(options))
        return real(address, options)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    settings = Settings(keepalive_seconds=12)
    with Client(settings, addresses={"solver": "127.0.0.1:1"}) as client:
        client.channel("solver")
    assert seen and seen[0]["grpc.keepalive_time_ms"] == 12_000
