"""Prometheus metrics of one service: calls, latencies, errors, jobs, queue.

Each server gets its own registry (so two servers in one test process do not
share counters) served over HTTP on ``BITMESH_METRICS_PORT`` (0 = off):

- ``bitmesh_rpc_calls_total{grpc_service,grpc_method,grpc_code}``: finished calls;
- ``bitmesh_rpc_errors_total{grpc_service,grpc_method,grpc_code}``: those not OK;
- ``bitmesh_rpc_latency_seconds{grpc_service,grpc_method}``: a histogram (a
  stream's latency is its whole life);
- ``bitmesh_rpc_in_flight{grpc_service,grpc_method}``: calls being served;
- ``bitmesh_jobs{kind,state}``: jobs of the service's store by state, read
  at scrape time so every replica reports the same truth (every declared
  kind is reported, zeros included);
- ``bitmesh_queue_length{queue}``: Celery messages waiting in the broker, one
  sample per training queue (``TRAINING_QUEUES`` of
  :mod:`bitmesh.jobs.plumbing`: training jobs and proxy NAS trials), the
  figures KEDA scales workers on;
- ``bitmesh_redis_memory_used_bytes`` and ``bitmesh_redis_memory_max_bytes``:
  Redis' ``INFO memory`` (``used_memory``, ``maxmemory``), reported by every
  service with a Redis. Redis runs with ``maxmemory-policy noeviction`` (job
  keys must never be evicted), so a full Redis refuses writes; the alert in
  ``deploy/k8s/components/redis-memory-alert`` fires well before that.

Gauges read at scrape time never fail a scrape: a store or broker that cannot
be read is logged and its samples are left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from bitmesh.jobs.plumbing import PROXY_NAS, SENSITIVITY, TRAINER, TRAINING_QUEUES, JobPlumbing
from bitmesh.jobs.records import JobState
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.rpc.handlers import WrappingInterceptor, split_method, wrap_handler
from bitmesh.settings import Settings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# How many of a kind's newest jobs a scrape reads; older ones are all terminal
# in practice, and a scrape must stay cheap.
JOB_SCAN_LIMIT = 1000

# gRPC service (full proto name) -> the plumbing of the job store it owns.
JOB_STORES: dict[str, JobPlumbing] = {
    "bitmesh.v1.SensitivityService": SENSITIVITY,
    "bitmesh.v1.TrainerService": TRAINER,
    "bitmesh.v1.ProxyNasService": PROXY_NAS,
}
# Services whose work goes through the Celery broker.
QUEUE_SERVICES: frozenset[str] = frozenset(
    {"bitmesh.v1.TrainerService", "bitmesh.v1.ProxyNasService"}
)


class RpcMetrics:
    """The call metrics of one server, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("grpc_service", "grpc_method")
        self.calls = Counter(
            "bitmesh_rpc_calls",
            "Finished calls by method and status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.errors = Counter(
            "bitmesh_rpc_errors",
            "Calls that ended with a status other than OK.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "bitmesh_rpc_latency_seconds",
            "Time from a call's start to its end.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bitmesh_rpc_in_flight",
            "Calls being served now.",
            labels,
            registry=self.registry,
        )

    def for_method(self, full_method: str) -> MethodMetrics:
        """The metrics of one method, their label children resolved once."""
        return MethodMetrics(self, full_method)

    def observe(
        self, full_method: str, context: grpc.ServicerContext
    ) -> AbstractContextManager[None]:
        """Count one call around its whole life; the code is read at its end."""
        return self.for_method(full_method).observe(context)


class MethodMetrics:
    """One method's samples, with the label lookups (a lock and a dict each in
    prometheus_client) done once per method instead of four times per call."""

    def __init__(self, metrics: RpcMetrics, full_method: str) -> None:
        self._metrics = metrics
        self._labels = split_method(full_method)
        self._in_flight = metrics.in_flight.labels(*self._labels)
        self._latency = metrics.latency.labels(*self._labels)
        self._calls: dict[grpc.StatusCode, Any] = {}
        self._errors: dict[grpc.StatusCode, Any] = {}

    def _count(self, code: grpc.StatusCode) -> None:
        calls = self._calls.get(code)
        if calls is None:
            calls = self._calls[code] = self._metrics.calls.labels(*self._labels, code.name)
        calls.inc()
        if code is not grpc.StatusCode.OK:
            errors = self._errors.get(code)
            if errors is None:
                errors = self._errors[code] = self._metrics.errors.labels(*self._labels, code.name)
            errors.inc()

    @contextmanager
    def observe(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Count one call around its whole life; the code is read at its end."""
        self._in_flight.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except GeneratorExit:
            code = grpc.StatusCode.CANCELLED  # the client went away mid-stream
            raise
        except BaseException:
            code = _code_of(context, default=grpc.StatusCode.UNKNOWN)
            raise
        else:
            code = _code_of(context, default=grpc.StatusCode.OK)
        finally:
            self._in_flight.dec()
            self._latency.observe(time.perf_counter() - start)
            self._count(code)


def _code_of(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else default


class MetricsInterceptor(WrappingInterceptor):
    """Records every call of the server in :class:`RpcMetrics`."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        super().__init__(
            lambda method, handler: wrap_handler(handler, metrics.for_method(method).observe)
        )


class JobStoreCollector(Collector):
    """``bitmesh_jobs{kind,state}``, counted from the job store at scrape time."""

    def __init__(
        self,
        store_factory: Callable[[], JobStore],
        kinds: Sequence[str] = (),
        scan_limit: int = JOB_SCAN_LIMIT,
    ) -> None:
        """``kinds`` are always reported (zeros included); others as found."""
        self._store_factory = store_factory
        self._store: JobStore | None = None
        self.kinds = tuple(kinds)
        self.scan_limit = scan_limit

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("bitmesh_jobs", "Jobs by kind and state.", labels=("kind", "state"))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bitmesh_jobs", "Jobs by kind and state.", labels=("kind", "state")
        )
        try:
            if self._store is None:
                self._store = self._store_factory()
            records = self._store.list(None, self.scan_limit)
        except Exception as exc:  # a scrape must not fail because the store is down
            log.warning("metrics: cannot read the job store: %s", exc)
            return
        counts: dict[tuple[str, str], int] = {}
        kinds = {*self.kinds, *(r.kind for r in records)}
        for kind in kinds:
            for job_state in JobState:
                counts[(kind, job_state.value)] = 0
        for record in records:
            key = (record.kind, record.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (kind, state), count in sorted(counts.items()):
            family.add_metric((kind, state), count)
        yield family


class QueueLengthCollector(Collector):
    """``bitmesh_queue_length{queue}``, one sample per queue, read at scrape time."""

    def __init__(
        self, length_of: Callable[[str], int], queues: Sequence[str] = TRAINING_QUEUES
    ) -> None:
        self._length_of = length_of
        self.queues = tuple(queues)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("bitmesh_queue_length", "Messages waiting.", labels=("queue",))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("bitmesh_queue_length", "Messages waiting.", labels=("queue",))
        for queue in self.queues:
            try:
                family.add_metric((queue,), self._length_of(queue))
            except Exception as exc:  # a scrape must not fail because the broker is down
                log.warning("metrics: cannot read the length of queue %s: %s", queue, exc)
        if family.samples:
            yield family


class RedisMemoryCollector(Collector):
    """Redis' memory use and ceiling, read from ``INFO memory`` at scrape time."""

    def __init__(self, info_memory: Callable[[], Mapping[str, Any]]) -> None:
        self._info_memory = info_memory

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "bitmesh_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)."
            ),
            GaugeMetricFamily(
                "bitmesh_redis_memory_max_bytes",
                "Redis' maxmemory (INFO maxmemory); 0 means no limit is set.",
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            info = self._info_memory()
            used, ceiling = float(info["used_memory"]), float(info["maxmemory"])
        except Exception as exc:  # a scrape must not fail because Redis is down
            log.warning("metrics: cannot read Redis' memory: %s", exc)
            return
        used_family, max_family = self._families()
        used_family.add_metric((), used)
        max_family.add_metric((), ceiling)
        yield used_family
        yield max_family


def redis_info_memory(url: str) -> dict[str, Any]:
    """``INFO memory`` of the Redis at ``url``, on a short-lived connection."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        info: dict[str, Any] = client.info("memory")
        return info
    finally:
        client.close()


def broker_queue_length(settings: Settings, queue: str) -> int:
    """Messages waiting in Celery's broker for ``queue``.

    Redis: the length of the list Celery pushes to (what KEDA's Redis scaler
    reads). Embedded default: the message files kombu's filesystem transport
    keeps in ``<artifact root>/queue/in`` (named ``<stamp>_<uuid>.<queue>.msg``).
    """
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    folder = Path(settings.artifact_root.removeprefix("file://")) / "queue" / "in"
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.name.endswith(f".{queue}.msg"))


def _store_opener(settings: Settings, store_name: str) -> Callable[[], JobStore]:
    return lambda: open_job_store(settings.redis_url, settings.artifact_root, store_name)


def add_service_collectors(
    registry: CollectorRegistry, service_names: Sequence[str], settings: Settings
) -> None:
    """Register the job and queue gauges that belong to the served services."""
    for name in service_names:
        if name in JOB_STORES:
            plumbing = JOB_STORES[name]
            opener = _store_opener(settings, plumbing.store)
            registry.register(JobStoreCollector(opener, plumbing.kinds))
    if any(name in QUEUE_SERVICES for name in service_names):
        registry.register(QueueLengthCollector(lambda q: broker_queue_length(settings, q)))
    redis_url = settings.redis_url
    if redis_url and any(name in JOB_STORES or name in QUEUE_SERVICES for name in service_names):
        registry.register(RedisMemoryCollector(lambda: redis_info_memory(redis_url)))


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint."""

    port: int
    _server: Any
    _thread: Any

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` in a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(port=int(server.server_port), _server=server, _thread=thread)
