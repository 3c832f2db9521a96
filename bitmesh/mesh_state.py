"""Where a running loopback mesh is: the file `bitmesh up` writes.

Clients find the mesh by, in order: explicit addresses, BITMESH_*_ADDRESS
variables, this file, then the default ports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bitmesh.settings import SERVICES, ServiceName, Settings


def state_path(settings: Settings) -> Path:
    return Path(settings.artifact_root.removeprefix("file://")) / "mesh.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    path = state_path(settings)
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


def write_state(settings: Settings, state: dict[str, Any]) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def clear_state(settings: Settings) -> None:
    state_path(settings).unlink(missing_ok=True)


def resolve_addresses(
    settings: Settings, overrides: dict[str, str] | None = None
) -> dict[ServiceName, str]:
    state = read_state(settings) or {}
    recorded: dict[str, str] = state.get("addresses", {})
    addresses: dict[ServiceName, str] = {}
    for service in SERVICES:
        explicit = (overrides or {}).get(service) or getattr(settings, f"{service}_address")
        env = os.environ.get(f"BITMESH_{service.upper()}_ADDRESS")
        addresses[service] = (
            explicit or env or recorded.get(service) or settings.address_of(service)
        )
    return addresses
