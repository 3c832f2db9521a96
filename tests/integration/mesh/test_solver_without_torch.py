"""The solver service imports, serves and solves with torch unimportable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bitmesh.v1 import common_pb2, solver_pb2, solver_pb2_grpc
from tests.integration.mesh.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

BLOCKER = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "torchvision":
            raise ImportError("torch is not installed in this image (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_solver_serves_with_torch_blocked(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}",
        "BITMESH_ARTIFACT_ROOT": str(tmp_path / "art"),
    }
    check = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert check.returncode != 0 and "blocked by the test" in check.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "solver_svc", "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        for _ in range(200):
            line = proc.stdout.readline()
            if "serving on" in line or not line:
                break
        match = re.search(r"serving on ([\d.]+):(\d+)", line)
        assert match, (
            f"solver did not start without torch: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
        )
        problem = solver_pb2.Problem(
            layers=[
                solver_pb2.ProblemLayer(
                    name=f"l{i}",
                    parameters=1000,
                    options=[
                        solver_pb2.ProblemOption(
                            key="int4/int4",
                            omega=1.0 + i,
                            weight_bits=4,
                            costs=common_pb2.LayerCosts(size_bytes=500, bops=16),
                        ),
                        solver_pb2.ProblemOption(
                            key="int8/int8",
                            omega=0.1,
                            weight_bits=8,
                            costs=common_pb2.LayerCosts(size_bytes=1000, bops=64),
                        ),
                    ],
                )
                for i in range(3)
            ]
        )
        with grpc.insecure_channel(f"{match.group(1)}:{match.group(2)}") as channel:
            stub = solver_pb2_grpc.SolverServiceStub(channel)
            solution = stub.Solve(
                solver_pb2.SolveRequest(
                    problem=problem, budgets=common_pb2.Budgets(max_size_bytes=2000)
                ),
                timeout=30,
            )
        assert solution.status == solver_pb2.SOLVE_STATUS_OPTIMAL
        chosen = {a.layer: a.option_key for a in solution.assignment}
        # Only one layer fits at int8 under 2000 bytes: the most sensitive one (l2).
        assert chosen == {"l0": "int4/int4", "l1": "int4/int4", "l2": "int8/int8"}
    finally:
        proc.terminate()
        proc.wait(30)
