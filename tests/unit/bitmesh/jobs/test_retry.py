"""A running job's store calls ride out an outage, for a bounded window."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bitmesh.errors import NotFound, Unavailable
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.retry import RetryingStore, RetryPolicy, StoreOutage, call_with_retry
from bitmesh.jobs.store import RedisJobStore

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _flaky(failures: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def func() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise Unavailable("Redis is not reachable: connection refused")
        return "ok"

    return calls, func


def test_retries_with_backoff_until_the_store_answers() -> None:
    clock = _Clock()
    calls, func = _flaky(5)
    policy = RetryPolicy(window_s=120, first_s=0.1, max_s=2.0)
    assert call_with_retry(func, policy, clock=clock, sleep=clock.sleep) == "ok"
    assert len(calls) == 6
    assert clock.now == pytest.approx(0.1 + 0.2 + 0.4 + 0.8 + 1.6)


def test_past_the_window_it_is_an_outage_with_a_message() -> None:
    clock = _Clock()
    _, func = _flaky(10_000)
    with pytest.raises(StoreOutage, match=r"unreachable for 5 s.*resumes from its checkpoint"):
        call_with_retry(func, RetryPolicy(window_s=5), clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(5.0)
    assert StoreOutage.status_name == "UNAVAILABLE"


def test_other_errors_are_not_retried() -> None:
    def missing() -> None:
        raise NotFound("job 'x' does not exist")

    with pytest.raises(NotFound):
        call_with_retry(missing, RetryPolicy(window_s=60))


def test_a_bad_window_is_refused_with_the_setting_s_name() -> None:
    with pytest.raises(ValueError, match="BITMESH_STORE_RETRY_SECONDS"):
        RetryPolicy(window_s=-1)


def test_an_unreachable_redis_store_ends_in_an_outage() -> None:
    # Port 1 on loopback: nothing listens, every call is refused.
    store = RetryingStore(RedisJobStore("redis://127.0.0.1:1/0"), RetryPolicy(window_s=0.3))
    with pytest.raises(StoreOutage, match="Redis is not reachable"):
        store.create(JobRecord(job_id="qat-1", kind="qat"))
    assert store.prefix == "bitmesh"  # the wrapped store's attributes show through
