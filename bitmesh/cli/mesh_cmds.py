"""`bitmesh up`, `bitmesh down`, `bitmesh status`."""

from __future__ import annotations

import argparse
import signal
import threading

from rich.table import Table

from bitmesh.cli.common import console, dump_json
from bitmesh.cli.up import running_mesh, start_mesh, stop_mesh
from bitmesh.client import Client
from bitmesh.settings import load_settings


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings()
    already = running_mesh(settings) is not None
    with console.status("starting the mesh (4 services + a Celery worker)..."):
        state = start_mesh(settings, with_worker=not args.no_worker)
    queue = settings.redis_url or "embedded (filesystem queue, no server)"
    console.print(f"[bold green]mesh {'already ' if already else ''}up[/] — queue: {queue}")
    for name, address in dict(state["addresses"]).items():  # type: ignore[call-overload]
        console.print(f"  {name:12s} {address}")
    if args.detach or already:
        console.print("stop it with: bitmesh down")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print("Ctrl-C stops the mesh")
    # In steps, as bitmesh/rpc/server.py's serve_until_signal: a signal the
    # kernel hands one of grpc's threads runs its handler only when the main
    # thread next runs bytecode.
    while not stop.wait(0.2):
        pass
    stop_mesh(settings)
    console.print("mesh stopped")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = stop_mesh(load_settings())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Client(load_settings()) as client:
        health = client.health_all()
        addresses = client.addresses
    if args.json:
        dump_json({s: {"address": addresses[s], "health": h} for s, h in health.items()})
    else:
        table = Table(title="bitmesh services")
        table.add_column("service")
        table.add_column("address")
        table.add_column("health")
        for service, state in health.items():
            colour = "green" if state == "SERVING" else "red"
            table.add_row(service, addresses[service], f"[{colour}]{state}[/]")
        console.print(table)
    return 0 if all(h == "SERVING" for h in health.values()) else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="start the whole mesh on loopback")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    up.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the mesh `bitmesh up --detach` started")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="health of every service")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
