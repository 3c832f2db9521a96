"""Fixtures for the security, limits and metrics tests: real servers on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitmesh.settings import Settings
from tests.integration.security.certs import TlsFiles, make_tls_files

TOKEN = "s3cret-token-for-tests"

if "health_port" in Settings.model_fields:
    MeshSettings: type[Settings] = Settings
else:  # until bitmesh.settings grows the field the manifests already use

    class MeshSettings(Settings):  # type: ignore[no-redef]
        health_port: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Loopback settings with a private artifact root, ignoring the environment."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "artifact_root": str(root),
        "redis_url": None,
        "auth_token": None,
        "metrics_port": 0,
    }
    values.update(overrides)
    return MeshSettings(**values)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def secure_channel(port: int, ca: Path) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(f"localhost:{port}", credentials)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No BITMESH_* or REDIS_URL from the outside leaks into Settings()."""
    import os

    for name in list(os.environ):
        if name.startswith("BITMESH_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    yield
