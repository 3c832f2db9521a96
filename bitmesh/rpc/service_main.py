"""The ``python -m <service>`` entry point every service shares."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bitmesh.logs import configure_logging
from bitmesh.rpc.server import (
    PortTaken,
    RefusedToStart,
    Registrar,
    RunningServer,
    create_server,
    refuse_insecure_bind,
    serve_until_signal,
)
from bitmesh.settings import ServiceName, Settings, load_settings

log = logging.getLogger(__name__)

# A service builds its registrars (and stop hooks) from the settings.
ServiceFactory = Callable[
    [Settings], tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]
]


def start_service(
    service: ServiceName,
    factory: ServiceFactory,
    settings: Settings,
    port: int | None = None,
    *,
    any_port_if_taken: bool = False,
) -> RunningServer:
    """Start ``service`` on ``port`` (settings' port when None; 0 = any free port).

    With ``any_port_if_taken``, a port another process holds is not an error:
    the service binds a free one instead (``bitmesh up`` on a machine where
    the default is taken). The bind itself decides, not a check before it:
    a port found free can be taken by another process before the service
    binds it, and ``bitmesh up`` lost that race to a parallel test once.

    An unguarded non-loopback bind is refused (:class:`RefusedToStart`) before
    the service builds anything."""
    refuse_insecure_bind(settings)
    registrars, names, stop_hooks = factory(settings)
    bind_port = settings.port_of(service) if port is None else port
    try:
        running = create_server(f"{settings.host}:{bind_port}", registrars, names, settings)
    except PortTaken as exc:
        if not any_port_if_taken or bind_port == 0:
            raise
        log.info("port %d is taken (%s); binding a free one", bind_port, exc)
        running = create_server(f"{settings.host}:0", registrars, names, settings)
    running.on_stop.extend(stop_hooks)
    return running


def write_port_file(path: str, port: int) -> None:
    """Publish the bound port atomically (rename), so a reader never sees a
    half-written number."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(f"{port}\n")
    partial.replace(target)


def main(service: ServiceName, factory: ServiceFactory, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {service}_svc", description=f"bitmesh {service} service"
    )
    parser.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (0 = any free port)")
    parser.add_argument(
        "--any-port-if-taken",
        action="store_true",
        help="bind a free port when --port is taken (bitmesh up)",
    )
    parser.add_argument(
        "--port-file", default=None, help="write the bound port to this file once bound"
    )
    parser.add_argument("--artifact-root", default=None)
    args = parser.parse_args(argv)
    settings = load_settings(host=args.host, artifact_root=args.artifact_root)
    configure_logging(settings.log_level, service)
    try:
        running = start_service(
            service, factory, settings, args.port, any_port_if_taken=args.any_port_if_taken
        )
    except RefusedToStart as exc:
        # A setting to fix, not a crash: the message alone, and exit code 2
        # (a usage error, as argparse's own).
        print(f"{service}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if args.port_file:
        write_port_file(args.port_file, running.port)
    serve_until_signal(
        running,
        settings.grace_seconds,
        ready=lambda: print(f"{service} serving on {settings.host}:{running.port}", flush=True),
    )
