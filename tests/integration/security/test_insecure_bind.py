"""A service others can reach does not start unguarded (issue 16, auth defaults)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.rpc.server import RefusedToStart, create_server
from tests.integration.security.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, host="0.0.0.0")
    with pytest.raises(RefusedToStart, match="BITMESH_ALLOW_INSECURE=1"):
        create_server("0.0.0.0:0", [], [], settings)


@pytest.mark.parametrize("guard", [{"auth_token": TOKEN}, {"allow_insecure": True}])
def test_a_token_or_the_explicit_opt_in_starts_it(tmp_path: Path, guard: dict) -> None:
    running = create_server("0.0.0.0:0", [], [], make_settings(tmp_path, host="0.0.0.0", **guard))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


def test_the_service_command_exits_2_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    """``python -m <service>`` shares this entry point; a trivial service
    stands in for the real ones so the test imports no engine."""
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith("BITMESH_") or k == "REDIS_URL")
    }
    env.update(PYTHONPATH=str(REPO), BITMESH_ARTIFACT_ROOT=str(tmp_path))
    code = (
        "from bitmesh.rpc.service_main import main\n"
        "main('solver', lambda s: ([], [], []), ['--host', '0.0.0.0', '--port', '0'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve 0.0.0.0 without BITMESH_AUTH_TOKEN" in done.stderr
    assert "BITMESH_ALLOW_INSECURE=1" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        ("alice: alice-token-0123456789\n", None),
        ("# nobody yet\n", "BITMESH_ALLOW_INSECURE=1"),  # no token at all: unguarded
        ("alice: short\n", "line 1: the token of 'alice' must be at least 16"),
    ],
    ids=["tenants", "empty", "malformed"],
)
def test_a_token_file_guards_the_bind_or_stops_it(
    tmp_path: Path, lines: str, refused: str | None
) -> None:
    """A token file alone guards a non-loopback service; one with no token
    does not, and one that does not parse stops it, naming the line."""
    tokens = tmp_path / "tokens"
    tokens.write_text(lines)
    settings = make_settings(tmp_path, host="0.0.0.0", token_file=str(tokens))
    if refused is not None:
        with pytest.raises(RefusedToStart, match=refused):
            create_server("0.0.0.0:0", [], [], settings)
        return
    create_server("0.0.0.0:0", [], [], settings).stop(0)
