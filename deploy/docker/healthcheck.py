"""Container health check of the bitmesh images (Docker HEALTHCHECK, exec probes).

Default: ask the standard gRPC health service of the service in this
container. It dials the plaintext health-only port when
``BITMESH_HEALTH_PORT`` is set (what the Kubernetes manifests do); otherwise
the loopback ports of the four services in turn, over TLS when
``BITMESH_TLS_CERT_FILE`` is set (trusting ``BITMESH_TLS_CA_FILE``, else the
certificate itself, and checking it for the name ``localhost``).

``--celery``: ask this container's Celery worker for a pong instead.

Exit 0 when healthy, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

SERVICE_PORT_VARS = (
    ("BITMESH_SENSITIVITY_PORT", 50051),
    ("BITMESH_SOLVER_PORT", 50052),
    ("BITMESH_TRAINER_PORT", 50053),
    ("BITMESH_PROXY_NAS_PORT", 50054),
)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _channel(port: int, plaintext: bool) -> object:
    import grpc

    target = f"127.0.0.1:{port}"
    cert = os.environ.get("BITMESH_TLS_CERT_FILE")
    if plaintext or not cert:
        return grpc.insecure_channel(target)
    with open(os.environ.get("BITMESH_TLS_CA_FILE") or cert, "rb") as fh:
        roots = fh.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(
        target, credentials, (("grpc.ssl_target_name_override", "localhost"),)
    )


def check_grpc(timeout: float) -> tuple[bool, str]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_port = int(os.environ.get("BITMESH_HEALTH_PORT", "0") or 0)
    if health_port:
        candidates = [(health_port, True)]
    else:
        ports = [int(os.environ.get(var, default)) for var, default in SERVICE_PORT_VARS]
        candidates = [(p, False) for p in ports if _listening(p)]
    if not candidates:
        return False, "no bitmesh service is listening on its port"
    for port, plaintext in candidates:
        channel = _channel(port, plaintext)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except Exception as exc:  # any failure is an unhealthy answer
            return False, f"port {port}: {type(exc).__name__}: {exc}"
        finally:
            channel.close()  # type: ignore[attr-defined]
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return (
                False,
                f"port {port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
            )
    return True, "SERVING"


def check_celery(timeout: float) -> tuple[bool, str]:
    from trainer_svc.celery_app import app

    name = f"celery@{socket.gethostname()}"
    replies = app.control.ping(destination=[name], timeout=timeout)
    if any(name in reply for reply in replies):
        return True, f"{name} answered"
    return False, f"{name} did not answer a ping within {timeout:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--celery", action="store_true", help="check the Celery worker instead")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    healthy, why = (check_celery if args.celery else check_grpc)(args.timeout)
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {why}\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
