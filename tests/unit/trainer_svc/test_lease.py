"""One runner per job: leases on SQLite, Redis and in process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_for
from trainer_svc.keepalive import keep_alive, redis_delivery_toucher
from trainer_svc.lease import LocalLease, RedisLease, SqliteLease

pytestmark = pytest.mark.unit


@pytest.fixture(params=["sqlite", "redis", "local"])
def lease(request, tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return SqliteLease(tmp_path / "leases.sqlite3")
    if request.param == "redis":
        return RedisLease(redis_url, prefix=f"test-lease-{uuid.uuid4().hex[:8]}")
    return LocalLease()


def test_one_holder_at_a_time_until_release_or_expiry(lease) -> None:  # type: ignore[no-untyped-def]
    # TTLs far longer than any stall of a loaded machine while a lease must hold.
    assert lease.acquire("job", "first", ttl=60)
    assert not lease.acquire("job", "second", ttl=60)
    assert lease.acquire("other-job", "second", ttl=60)
    assert lease.renew("job", "first", ttl=60)
    assert not lease.renew("job", "second", ttl=60)
    lease.release("job", "second")  # not the owner: no effect
    assert not lease.acquire("job", "second", ttl=60)
    lease.release("job", "first")
    assert lease.acquire("job", "second", ttl=0.2)
    # The holder died without releasing: its lease lapses on its own.
    wait_for(lambda: lease.acquire("job", "third", ttl=60), 30, "the lapsed lease to free up")
    assert not lease.renew("job", "second", ttl=60)  # the dead holder lost it


class _Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_keep_alive_renews_until_the_block_ends(tmp_path: Path) -> None:
    clock = _Clock()
    lease = SqliteLease(tmp_path / "leases.sqlite3", clock=clock)
    assert lease.acquire("job", "me", ttl=10)
    renewals: list[float] = []

    def renew() -> bool:
        renewals.append(clock.now)
        return bool(lease.renew("job", "me", 10))

    with keep_alive(0.01, [renew]):
        clock.now += 8  # close to expiry: only a renewal from now on keeps it
        wait_for(lambda: renewals and renewals[-1] == clock.now, 30, "a renewal at t+8")
        clock.now += 7  # past the first TTL, within the renewed one
        assert not lease.acquire("job", "other", ttl=10)
    beats = len(renewals)
    clock.now += 11  # past the last renewal's TTL
    assert lease.acquire("job", "other", ttl=10)
    assert len(renewals) == beats, "keep_alive went on renewing after its block ended"


def test_delivery_toucher_refreshes_only_an_existing_delivery(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tag = f"test-tag-{uuid.uuid4().hex}"
    touch = redis_delivery_toucher(redis_url, tag)
    touch()
    assert client.zscore("unacked_index", tag) is None  # never creates one
    client.zadd("unacked_index", {tag: 1.0})
    try:
        touch()
        assert client.zscore("unacked_index", tag) == pytest.approx(time.time(), abs=5)
    finally:
        client.zrem("unacked_index", tag)
