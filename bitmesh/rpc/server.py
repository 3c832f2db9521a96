"""The one server factory every service uses, and the process lifecycle.

``create_server`` adds the standard health service, server reflection (so
``grpcurl`` works) and the interceptors; tests bind port 0 and get the real
port back. ``serve_until_signal`` runs a server until SIGTERM/SIGINT, then
shuts down gracefully: health goes NOT_SERVING, new calls are refused, calls
in flight get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bitmesh.rpc.errors import ErrorInterceptor
from bitmesh.settings import Settings

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.Server], None]


@dataclass
class RunningServer:
    """A started server, its bound port and what to stop with it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: Sequence[str]
    on_stop: list[Callable[[float], None]] = field(default_factory=list)

    def stop(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING first, then finish calls in flight."""
        self.health.enter_graceful_shutdown()
        for hook in self.on_stop:
            hook(grace)
        self.server.stop(grace).wait(grace + 1)


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


def create_server(
    address: str,
    registrars: Sequence[Registrar],
    service_names: Sequence[str],
    settings: Settings,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int = 16,
) -> RunningServer:
    """Build and start a server on ``address`` (port 0 picks a free port)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[*interceptors, ErrorInterceptor()],
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
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    for name in (*service_names, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on port %d", ", ".join(service_names), port)
    return RunningServer(server, port, health_servicer, service_names)


def serve_until_signal(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully."""
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down (grace %.1f s)", signum, grace)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    stop.wait()
    running.stop(grace)
    log.info("stopped")
