"""`bitmesh up --detach`, `status`, `layers`, `down` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.mesh.helpers import REPO_ROOT, exited

pytestmark = pytest.mark.integration


def _bitmesh(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitmesh.cli.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("queue", ["embedded", "redis"])
def test_up_status_layers_down(tmp_path: Path, queue: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        {
            "BITMESH_ARTIFACT_ROOT": str(tmp_path / "art"),
            "PYTHONPATH": str(REPO_ROOT),
            "COLUMNS": "200",
        }
    )
    if queue == "redis":
        env["REDIS_URL"] = redis_url
    else:
        # No job runs here: the embedded mesh skips the trainer's and the
        # worker's torch imports (about 16 s of CPU); the Redis mesh keeps
        # the default, so `up` with warm imports stays covered.
        env["BITMESH_TRAINER_WARM_IMPORTS"] = "0"
        env["BITMESH_SENSITIVITY_WARM_IMPORTS"] = "0"  # digits_cnn needs no torchvision
    up = _bitmesh(["up", "--detach"], env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((tmp_path / "art" / "mesh.json").read_text())
        assert set(state["addresses"]) == {"sensitivity", "solver", "trainer", "proxy_nas"}
        assert "worker" in state["pids"]

        status = _bitmesh(["status", "--json"], env)
        assert status.returncode == 0, status.stdout + status.stderr
        health = json.loads(status.stdout)
        assert {h["health"] for h in health.values()} == {"SERVING"}

        layers = _bitmesh(
            ["layers", "--model", "digits_cnn", "--options", "int4,int8", "--json"], env
        )
        assert layers.returncode == 0, layers.stderr
        reply = json.loads(layers.stdout)
        assert len(reply["layers"]) >= 4
        first = reply["layers"][0]
        assert [o["option_key"] for o in first["options"]] == ["int4/int4", "int8/int8"]

        bad = _bitmesh(["layers", "--model", "resnet19"], env)
        assert bad.returncode == 2
        assert "INVALID_ARGUMENT" in bad.stderr and "resnet18" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        down = _bitmesh(["down"], env)
    assert down.returncode == 0
    assert not (tmp_path / "art" / "mesh.json").exists()
    for name, pid in state["pids"].items():
        assert exited(pid), f"{name} (pid {pid}) still runs after `bitmesh down`"
