"""The embedded queue's transport: kombu's filesystem transport, which stops
polling as soon as its worker begins a shutdown.

Why: Celery runs a transport without event-loop support (this one) in its
blocking loop, which drains the queue for up to 2 s per cycle, sees the
shutdown flag only between cycles and then runs one more cycle: an idle
worker's warm shutdown waited about 4 s for nothing (`bitmesh down`, every
embedded test worker). ``worker_shutting_down`` (sent by Celery's
SIGTERM/SIGINT/SIGQUIT handler in the worker's main process) sets a flag that
ends the current drain within one polling interval and every later one at
once. Nothing else changes: a task already running still finishes (warm
shutdown), and no message is fetched after the flag is set.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery.signals import worker_shutting_down
from kombu.transport import filesystem

__all__ = ["Transport"]

_stopping = threading.Event()


@worker_shutting_down.connect
def _stop_polling(**_: Any) -> None:
    _stopping.set()


class Transport(filesystem.Transport):  # type: ignore[misc]
    """kombu's filesystem transport, drained in polling-interval steps."""

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        step = self.polling_interval or 0.1
        while not _stopping.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                super().drain_events(connection, timeout=step if left is None else min(step, left))
            except TimeoutError:
                continue
            return
        raise TimeoutError()
