"""One runner per job: leases on SQLite, Redis and in process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

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
    assert lease.acquire("job", "first", ttl=0.6)
    assert not lease.acquire("job", "second", ttl=0.6)
    assert lease.acquire("other-job", "second", ttl=0.6)
    assert lease.renew("job", "first", ttl=0.6)
    assert not lease.renew("job", "second", ttl=0.6)
    lease.release("job", "second")  # not the owner: no effect
    assert not lease.acquire("job", "second", ttl=0.6)
    lease.release("job", "first")
    assert lease.acquire("job", "second", ttl=0.3)
    time.sleep(0.5)  # the holder died: its lease lapses
    assert lease.acquire("job", "third", ttl=0.3)


def test_keep_alive_renews_until_the_block_ends(tmp_path: Path) -> None:
    lease = SqliteLease(tmp_path / "leases.sqlite3")
    assert lease.acquire("job", "me", ttl=0.4)
    with keep_alive(0.1, [lambda: lease.renew("job", "me", 0.4)]):
        time.sleep(0.8)  # twice the TTL: still held thanks to the renewals
        assert not lease.acquire("job", "other", ttl=0.4)
    time.sleep(0.6)
    assert lease.acquire("job", "other", ttl=0.4)


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
