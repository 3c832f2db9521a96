"""A cap on the response streams one server serves at once (Watch, mostly).

Why: a server has one thread per admitted call (``BITMESH_MAX_CONCURRENT_RPCS``)
and a Watch stream holds its thread for as long as the job runs. Without a
cap of their own, as many watchers as the server takes calls filled it, and
every unary call (a Get, a Start, the main port's health) was then refused
for the job's whole life: 64 clients watching one analysis made the
sensitivity service unusable. With this cap streams take at most
``BITMESH_MAX_CONCURRENT_STREAMS`` of those threads, the rest stay for calls
that end quickly, and the stream past the cap is refused at once with
RESOURCE_EXHAUSTED naming the setting (``bitmesh.Client`` waits and retries
a refused Watch for a bounded time).

The refusal does not wait on the server: a stream waiting there for a slot
would hold one of the threads the cap keeps for unary calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from bitmesh.rpc.handlers import WrappingInterceptor, wrap_handler

__all__ = ["StreamCapInterceptor", "StreamSlots", "stream_cap"]

#: Text of the refusal, which ``bitmesh.Client`` recognises (with the status).
STREAM_CAP_SETTING = "BITMESH_MAX_CONCURRENT_STREAMS"


def stream_cap(max_streams: int, max_concurrent_rpcs: int) -> int:
    """The streams a server serves at once: the setting, but always leaving at
    least one thread of the call cap to unary calls (one when the cap is 1)."""
    return max(1, min(max_streams, max_concurrent_rpcs - 1))


class StreamSlots:
    """A count of open streams with a hard ceiling; taking a slot never waits."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"{STREAM_CAP_SETTING} must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self.open = 0

    def try_take(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1

    @contextmanager
    def held(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold a slot for the whole stream, or end the call RESOURCE_EXHAUSTED."""
        if not self.try_take():
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server already serves {self.limit} streams (Watch calls), the most it "
                f"serves at once ({STREAM_CAP_SETTING}); retry shortly, or poll the job with "
                "its Get call",
            )
        try:
            yield
        finally:
            self.give_back()


class StreamCapInterceptor(WrappingInterceptor):
    """Wraps every response-streaming method in :meth:`StreamSlots.held`;
    unary-response methods pass untouched."""

    def __init__(self, slots: StreamSlots) -> None:
        self.slots = slots

        def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
            if handler.unary_stream is None and handler.stream_stream is None:
                return handler
            return wrap_handler(handler, slots.held)

        super().__init__(wrap)
