"""The one server factory every service uses, and the process lifecycle.

``create_server`` adds the standard health service, server reflection (so
``grpcurl`` works) and the interceptors; tests bind port 0 and get the real
port back. Each server serves at most ``BITMESH_MAX_CONCURRENT_RPCS`` calls at
once, each on a thread of its own; one past that ends RESOURCE_EXHAUSTED at
once. Of those, at most ``BITMESH_MAX_CONCURRENT_STREAMS`` may be response
streams (Watch), so watchers cannot take the threads unary calls need
(``bitmesh/rpc/streams.py``). Driven by the settings, it also adds bearer-token
authentication (``BITMESH_AUTH_TOKEN``, and ``BITMESH_TOKEN_FILE``'s tenants),
TLS (``BITMESH_TLS_*``), path confinement for
servers others can reach, Prometheus metrics on ``BITMESH_METRICS_PORT`` and,
when ``BITMESH_HEALTH_PORT`` is set, a plaintext health-only port for
Kubernetes' gRPC probes (which speak neither TLS nor tokens). Every call runs
with a request id that each log line carries.

``serve_until_signal`` runs a server until SIGTERM/SIGINT, then shuts down
gracefully: health goes NOT_SERVING, new calls are refused, calls in flight
get ``grace_seconds`` to finish. A watchdog then bounds the whole exit:
a process still alive ``grace + EXIT_MARGIN_S`` seconds after the signal
dumps every thread's stack and exits (see :func:`exit_watchdog`).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bitmesh.rpc.auth import auth_configured, auth_interceptor
from bitmesh.rpc.decode import RequestDecodeInterceptor
from bitmesh.rpc.errors import ErrorInterceptor
from bitmesh.rpc.keepalive import server_keepalive_options
from bitmesh.rpc.metrics import (
    MetricsInterceptor,
    MetricsServer,
    RpcMetrics,
    add_service_collectors,
    start_metrics_server,
)
from bitmesh.rpc.path_guard import is_loopback, path_guard_interceptor
from bitmesh.rpc.request_ids import RequestIdInterceptor
from bitmesh.rpc.streams import StreamCapInterceptor, StreamSlots, stream_cap
from bitmesh.settings import Settings
from bitmesh.tenants import TokenFileError

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.Server], None]

#: The health-only server's threads and cap. It serves only Check, which takes
#: microseconds, so two threads keep up with any number of probes; the cap
#: bounds a flood's queue.
HEALTH_THREADS = 2
HEALTH_MAX_CONCURRENT_RPCS = 32


@dataclass
class RunningServer:
    """A started server, its bound port and what to stop with it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: Sequence[str]
    on_stop: list[Callable[[float], None]] = field(default_factory=list)
    metrics: RpcMetrics | None = None
    metrics_port: int = 0  # bound port of the /metrics endpoint (0 = off)
    health_port: int = 0  # bound plaintext health-only port (0 = none)
    _health_server: grpc.Server | None = None
    _metrics_server: MetricsServer | None = None

    def stop(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING first, then finish calls in flight."""
        self.health.enter_graceful_shutdown()
        for hook in self.on_stop:
            hook(grace)
        self.server.stop(grace).wait(grace + 1)
        # Probes and scrapes keep answering (NOT_SERVING) until the end.
        if self._health_server is not None:
            self._health_server.stop(0).wait(1)
        if self._metrics_server is not None:
            self._metrics_server.stop()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mutual TLS with a CA)."""
    if not settings.tls_cert_file:
        return None
    if not settings.tls_key_file:
        raise ValueError("BITMESH_TLS_CERT_FILE is set but BITMESH_TLS_KEY_FILE is not")
    with open(settings.tls_key_file, "rb") as k, open(settings.tls_cert_file, "rb") as c:
        pair = (k.read(), c.read())
    root = None
    if settings.tls_client_ca_file:
        with open(settings.tls_client_ca_file, "rb") as ca:
            root = ca.read()
    return grpc.ssl_server_credentials(
        [pair], root_certificates=root, require_client_auth=root is not None
    )


class RefusedToStart(Exception):
    """The settings would serve a network unguarded; the message says what to set."""


def _host_of(address: str) -> str:
    host, _, _ = address.rpartition(":")
    return host or address


def refuse_insecure_bind(settings: Settings, address: str | None = None) -> None:
    """Refuse to serve a non-loopback address with no token, unless the
    operator says so (``BITMESH_ALLOW_INSECURE=1``).

    An empty token turns authentication off; on 0.0.0.0 that served any
    caller with only a warning in a log nobody reads at start. Loopback (the
    embedded mesh) needs nothing; the manifests always set a token.

    A token file that cannot be read or parsed is refused too, wherever the
    service binds: starting with fewer tokens than the operator wrote would
    lock tenants out, or let everyone in.
    """
    host = settings.host if address is None else _host_of(address)
    try:
        configured = auth_configured(settings)
    except TokenFileError as exc:
        raise RefusedToStart(str(exc)) from None
    if is_loopback(host) or configured or settings.allow_insecure:
        return
    raise RefusedToStart(
        f"refusing to serve {host} without BITMESH_AUTH_TOKEN: any caller that reaches it could "
        "run jobs and read the artifact store. Set BITMESH_AUTH_TOKEN (or BITMESH_TOKEN_FILE), "
        "bind a loopback address (--host 127.0.0.1), or set BITMESH_ALLOW_INSECURE=1 to serve a "
        "network you trust anyway"
    )


class PortTaken(OSError):
    """The service's own port could not be bound (another process holds it,
    or the address is not this machine's): apart from any other start-up
    failure, so that ``bitmesh up``'s fallback to a free port retries only
    this one."""


def create_server(
    address: str,
    registrars: Sequence[Registrar],
    service_names: Sequence[str],
    settings: Settings,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int | None = None,
) -> RunningServer:
    """Build and start a server on ``address`` (port 0 picks a free port).

    Raises :class:`RefusedToStart` for a non-loopback address without a token
    (see :func:`refuse_insecure_bind`), before anything is bound.
    """
    refuse_insecure_bind(settings, address)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *server_keepalive_options(settings),
    ]
    metrics = RpcMetrics() if settings.metrics_port else None
    # One thread per admitted call: a call past the cap is refused at once
    # (RESOURCE_EXHAUSTED) rather than queued behind long streams.
    cap = settings.max_concurrent_rpcs
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers or cap, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=cap,
        interceptors=[
            *_standard_interceptors(settings, metrics),
            *interceptors,
            ErrorInterceptor(),
        ],
        options=options,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for register in registrars:
        register(server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise PortTaken(f"could not bind {address}: {exc}") from None
    if port == 0:
        raise PortTaken(f"could not bind {address}")
    _warn_if_exposed(settings, tls=credentials is not None)
    health_server, health_port = _health_only_server(settings, health_servicer)
    server.start()
    running = RunningServer(server, port, health_servicer, service_names, metrics=metrics)
    running._health_server, running.health_port = health_server, health_port
    if metrics is not None:
        add_service_collectors(metrics.registry, service_names, settings)
        try:
            running._metrics_server = start_metrics_server(
                metrics.registry, settings.host, settings.metrics_port
            )
        except OSError:
            running.stop(0)
            raise
        running.metrics_port = running._metrics_server.port
    for name in (*service_names, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on port %d", ", ".join(service_names), port)
    return running


def _standard_interceptors(
    settings: Settings, metrics: RpcMetrics | None
) -> list[grpc.ServerInterceptor]:
    """Outermost first: request parsing (so bytes that do not parse are
    INVALID_ARGUMENT, and everything beneath sees a message), request id (so
    every later log line has it), metrics (so refused calls are counted),
    authentication, path confinement, then the stream cap (so only callers
    let in take a stream's slot)."""
    chain: list[grpc.ServerInterceptor] = [RequestDecodeInterceptor(), RequestIdInterceptor()]
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    for optional in (auth_interceptor(settings), path_guard_interceptor(settings)):
        if optional is not None:
            chain.append(optional)
    slots = StreamSlots(stream_cap(settings.max_concurrent_streams, settings.max_concurrent_rpcs))
    chain.append(StreamCapInterceptor(slots))
    return chain


def _health_only_server(
    settings: Settings, health_servicer: health.HealthServicer
) -> tuple[grpc.Server | None, int]:
    """A plaintext server with only health ``Check``, for kubelet probes.

    It shares the main server's health servicer, so graceful shutdown turns
    both NOT_SERVING at once. Health answers reveal nothing and need no token.
    It has threads of its own and its own cap, so however many calls hold the
    main server (which answers health too, or RESOURCE_EXHAUSTED once full),
    a probe here is answered at once: 64 watchers had starved health on the
    main port until the probe's deadline. Only ``Check`` is served (all the
    kubelet sends): health ``Watch`` holds a thread for as long as the caller
    likes (grpc's servicer blocks in it), so two of them took both threads.
    """
    wanted = int(getattr(settings, "health_port", 0) or 0)
    if not wanted:
        return None, 0
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health"),
        maximum_concurrent_rpcs=HEALTH_MAX_CONCURRENT_RPCS,
        options=[("grpc.so_reuseport", 0), *server_keepalive_options(settings)],
    )
    check = grpc.unary_unary_rpc_method_handler(
        health_servicer.Check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(health.SERVICE_NAME, {"Check": check}),)
    )
    port = server.add_insecure_port(f"{settings.host}:{wanted}")
    if port == 0:
        raise OSError(f"could not bind the health port {settings.host}:{wanted}")
    server.start()
    return server, port


def _warn_if_exposed(settings: Settings, tls: bool) -> None:
    if is_loopback(settings.host):
        return
    if not auth_configured(settings):  # only with BITMESH_ALLOW_INSECURE=1
        log.warning(
            "listening on %s without BITMESH_AUTH_TOKEN (BITMESH_ALLOW_INSECURE=1): any caller "
            "is served",
            settings.host,
        )
    if not tls:
        log.warning("listening on %s without TLS (BITMESH_TLS_CERT_FILE)", settings.host)


#: Seconds past the grace period a stopping process may take to exit.
EXIT_MARGIN_S = 10.0
#: How often the main thread wakes to run signal handlers (see serve_until_signal).
SIGNAL_POLL_S = 0.2


def exit_watchdog(seconds: float) -> threading.Timer:
    """Exit the process ``seconds`` from now if it is still alive then.

    Why: after the graceful stop nothing of ours runs, but the interpreter's
    exit still joins every non-daemon thread a library left behind, and a
    stop can hang in a library too. (The solver's 30 s hang in the test suite
    was a SIGTERM the main thread never ran, fixed in ``serve_until_signal``;
    this bounds whatever else may be left.) In Kubernetes such a pod is only
    SIGKILLed at the end of its termination grace period. The watchdog logs the threads still alive and
    dumps their stacks (so the cause can be found), then exits with 0: the
    stop itself was graceful."""

    def force() -> None:
        alive = sorted(
            t.name
            for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread()
        )
        log.warning(
            "still running %.1f s after the stop signal; non-daemon threads: %s; exiting now",
            seconds,
            ", ".join(alive) or "none",
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer


def serve_until_signal(
    running: RunningServer,
    grace: float,
    exit_margin: float = EXIT_MARGIN_S,
    ready: Callable[[], None] | None = None,
) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully; the process exits
    within ``grace + exit_margin`` seconds of the signal, whatever is left.

    ``ready`` runs once the signal handlers are in place: a "serving" line
    printed before them let a supervisor's early SIGTERM kill the process
    without its graceful stop."""
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down (grace %.1f s)", signum, grace)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if ready is not None:
        ready()
    # Woken every SIGNAL_POLL_S: the kernel may hand SIGTERM to any thread
    # (grpc's own, say); Python then runs the handler only when the main
    # thread next runs bytecode, and a main thread blocked in a plain
    # ``stop.wait()`` never does: the service ignored that SIGTERM for good.
    while not stop.wait(SIGNAL_POLL_S):
        pass
    exit_watchdog(grace + exit_margin)
    running.stop(grace)
    log.info("stopped")
