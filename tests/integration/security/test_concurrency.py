"""Threads that cannot be starved: a cap on calls at once, health apart,
deadlines and keepalive on every client call (issue 16).

Real servers from the one factory, with a tiny blocking service beside the
standard ones: each call holds its thread until the test releases it, so
"the server is full" is a state the test reaches exactly, with no sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.client import Client, error_from_rpc
from bitmesh.errors import ResourceExhausted
from bitmesh.rpc.server import RunningServer, create_server
from bitmesh.rpc.streams import STREAM_CAP_SETTING
from bitmesh.v1 import common_pb2, sensitivity_pb2
from tests.integration.security.conftest import free_port, make_settings
from tests.metrics_scrape import metric_sum
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CAP = 4
EXTRA = 3
HOLD = "/bitmesh.test.Block/Hold"
WATCH = "/bitmesh.v1.SensitivityService/WatchAnalysis"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Blocker:
    """Holds every call until ``release`` is set; counts the calls inside."""

    release: threading.Event = field(default_factory=threading.Event)
    inside: int = 0
    all_inside: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.inside += 1
            if self.inside == CAP:
                self.all_inside.set()
        self.release.wait(30)
        return b"done"


@pytest.fixture
def blocker() -> Blocker:
    return Blocker()


@pytest.fixture
def server(tmp_path: Path, blocker: Blocker) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path, max_concurrent_rpcs=CAP, health_port=free_port())
    handlers = {HOLD.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(blocker.hold)}
    generic = grpc.method_handlers_generic_handler("bitmesh.test.Block", handlers)
    running = create_server(
        "127.0.0.1:0", [lambda s: s.add_generic_rpc_handlers((generic,))], [], settings
    )
    yield running
    blocker.release.set()
    running.stop(0)


def _health(port: int) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_calls_past_the_cap_are_refused_and_health_still_answers(
    server: RunningServer, blocker: Blocker, tmp_path: Path
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        hold = channel.unary_unary(HOLD)
        held = [hold.future(b"", timeout=30) for _ in range(CAP)]
        assert blocker.all_inside.wait(10), "the first CAP calls never all started"
        for _ in range(EXTRA):  # refused at once, not queued until their deadline
            with pytest.raises(grpc.RpcError) as info:
                hold(b"", timeout=10)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # bitmesh.Client's error names the cap (gRPC's own text does not).
        error = error_from_rpc(info.value)
        assert isinstance(error, ResourceExhausted)
        assert "BITMESH_MAX_CONCURRENT_RPCS" in error.message
        # The health port has threads of its own: it answers while the API port is full.
        assert _health(server.health_port) == SERVING
        # The API port's own health is refused like any call past the cap,
        # which bitmesh.Client reports as BUSY, not UNREACHABLE.
        with pytest.raises(grpc.RpcError) as info:
            _health(server.port)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        address = {"solver": f"127.0.0.1:{server.port}"}
        with Client(make_settings(tmp_path), addresses=address) as client:
            assert client.health("solver") == "BUSY"
        blocker.release.set()
        assert [f.result(timeout=10) for f in held] == [b"done"] * CAP
        assert hold(b"", timeout=10) == b"done"  # the capacity is back
        assert _health(server.port) == SERVING


def test_health_watchers_cannot_starve_the_probe_port(server: RunningServer) -> None:
    """Health Watch blocks a thread for as long as its caller likes; the
    probe port serves Check only, so watchers there cannot take its threads."""
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(CAP + EXTRA)
        ]
        for watch in watches:
            with pytest.raises(grpc.RpcError) as info:
                next(watch)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING


@dataclass
class SegmentedWatch:
    """A Watch whose first stream stops sending after two events (a long
    quiet job) and whose second replays all four events and ends."""

    calls: int = 0

    def watch(
        self, request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[sensitivity_pb2.SensitivityEvent]:
        self.calls += 1
        total = 2 if self.calls == 1 else 4
        for i in range(total):
            yield sensitivity_pb2.SensitivityEvent(
                status=common_pb2.JobStatus(job_id=request.job_id, message=str(i))
            )
        if self.calls == 1:
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait(30)  # until the client's deadline ends this stream


def test_watch_streams_have_deadlines_and_resume_where_they_were(tmp_path: Path) -> None:
    """No Watch goes without a deadline; a deadline that passes mid-job
    reopens the stream and skips what was seen."""
    watch = SegmentedWatch()
    handler = grpc.unary_stream_rpc_method_handler(
        watch.watch,
        request_deserializer=common_pb2.JobRef.FromString,
        response_serializer=sensitivity_pb2.SensitivityEvent.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(
        "bitmesh.v1.SensitivityService", {"WatchAnalysis": handler}
    )
    server_settings = make_settings(tmp_path)
    running = create_server(
        "127.0.0.1:0", [lambda s: s.add_generic_rpc_handlers((generic,))], [], server_settings
    )
    try:
        settings = make_settings(tmp_path, watch_segment_seconds=0.5)
        with Client(settings, addresses={"sensitivity": f"127.0.0.1:{running.port}"}) as client:
            events = [e.status.message for e in client.watch_analysis("job-1")]
        assert events == ["0", "1", "2", "3"]
        assert watch.calls == 2
    finally:
        running.stop(0)


def test_the_pool_has_a_thread_for_every_admitted_call(tmp_path: Path) -> None:
    """Threads = the cap, so an admitted call never waits for a thread."""
    seen: dict[str, Any] = {}
    real = futures.ThreadPoolExecutor

    def spy(*args: Any, **kwargs: Any) -> futures.ThreadPoolExecutor:
        seen.setdefault("max_workers", kwargs.get("max_workers"))
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr("bitmesh.rpc.server.futures.ThreadPoolExecutor", spy)
    try:
        running = create_server(
            "127.0.0.1:0", [], [], make_settings(tmp_path, max_concurrent_rpcs=7)
        )
    finally:
        mp.undo()
    running.stop(0)
    assert seen["max_workers"] == 7


def _refusals(metrics_port: int) -> float:
    return metric_sum(
        metrics_port,
        lambda s: (
            s.name == "bitmesh_rpc_calls_total"
            and s.labels.get("grpc_code") == "RESOURCE_EXHAUSTED"
        ),
    )


def test_streams_past_their_cap_are_refused_and_the_client_waits_for_a_slot(
    tmp_path: Path,
) -> None:
    """With one stream slot, a second Watch is refused at once naming the
    setting (unary calls keep their threads); bitmesh.Client retries it and
    gets its stream once the first ends."""
    release, served = threading.Event(), []

    def watch(
        request: common_pb2.JobRef, context: grpc.ServicerContext
    ) -> Iterator[sensitivity_pb2.SensitivityEvent]:
        served.append(request.job_id)
        yield sensitivity_pb2.SensitivityEvent(status=common_pb2.JobStatus(message="0"))
        if len(served) == 1:
            release.wait(30)  # the first stream holds the only slot

    handler = grpc.unary_stream_rpc_method_handler(
        watch,
        request_deserializer=common_pb2.JobRef.FromString,
        response_serializer=sensitivity_pb2.SensitivityEvent.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(
        "bitmesh.v1.SensitivityService", {"WatchAnalysis": handler}
    )
    settings = make_settings(
        tmp_path, max_concurrent_rpcs=CAP, max_concurrent_streams=1, metrics_port=free_port()
    )
    running = create_server(
        "127.0.0.1:0", [lambda s: s.add_generic_rpc_handlers((generic,))], [], settings
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stream = channel.unary_stream(
                WATCH,
                request_serializer=common_pb2.JobRef.SerializeToString,
                response_deserializer=sensitivity_pb2.SensitivityEvent.FromString,
            )
            first = stream(common_pb2.JobRef(job_id="first"), timeout=30)
            assert next(first).status.message == "0"
            with pytest.raises(grpc.RpcError) as info:
                next(stream(common_pb2.JobRef(job_id="second"), timeout=30))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert STREAM_CAP_SETTING in (info.value.details() or "")
            assert _health(running.port) == SERVING  # unary calls still have threads

            got: list[str] = []
            address = {"sensitivity": f"127.0.0.1:{running.port}"}
            with Client(make_settings(tmp_path), addresses=address) as client:
                follower = threading.Thread(
                    target=lambda: got.extend(
                        e.status.message for e in client.watch_analysis("third")
                    )
                )
                follower.start()
                # The client's stream was refused too, and it is waiting, not failing.
                wait_for(lambda: _refusals(running.metrics_port) >= 2, 30, "a second refusal")
                release.set()
                follower.join(30)
            assert got == ["0"]
            assert served == ["first", "third"]
    finally:
        release.set()
        running.stop(0)
