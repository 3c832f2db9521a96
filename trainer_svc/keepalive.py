"""Signs of life of a running job: lease renewals and a fresh Redis delivery.

A background thread (so a long step cannot starve it) calls each action every
``interval`` seconds until stopped. When the process dies, the renewals stop:
the lease lapses and, on Redis, the task's delivery ages past the visibility
timeout, so a live worker restores the message and resumes the job.

Kombu's Redis transport records each unacknowledged delivery in the sorted
set ``unacked_index`` scored by its delivery time, and restores those older
than the visibility timeout. Re-scoring our own entry (``ZADD XX``, which never
creates one) keeps a live task from being delivered twice, whatever its
length. The key name is kombu's default (bitmesh sets no global key prefix).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bitmesh.errors import Unavailable

log = logging.getLogger(__name__)

UNACKED_INDEX_KEY = "unacked_index"

Action = Callable[[], object]


def redis_delivery_toucher(redis_url: str, delivery_tag: str) -> Action:
    """An action that marks the delivery ``delivery_tag`` as just delivered."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)

    def touch() -> object:
        return client.zadd(UNACKED_INDEX_KEY, {delivery_tag: time.time()}, xx=True)

    return touch


def _store_down(exc: Exception) -> bool:
    """Redis unreachable (raw from redis-py, or as bitmesh's Unavailable)."""
    import redis

    return isinstance(
        exc, (Unavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    )


@contextmanager
def keep_alive(interval: float, actions: list[Action]) -> Iterator[None]:
    """Run ``actions`` every ``interval`` seconds (and once now) while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            for action in actions:
                try:
                    action()
                except Exception as exc:  # a missed beat is retried at the next one
                    if _store_down(exc):  # expected in an outage: one line, no trace
                        log.warning("keepalive: %s; retrying at the next beat", exc)
                    else:
                        log.warning("keepalive action failed", exc_info=True)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="trainer-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
