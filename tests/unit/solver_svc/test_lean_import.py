"""The solver imports and solves with torch unimportable (the solver image has none)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch was importable")

    import solver_svc.solve, solver_svc.frontier, solver_svc.latency, solver_svc.hawq
    from solver_svc.problem import LayerChoice, OptionCost, Problem
    from solver_svc.solve import solve
    from solver_svc.spec import Budgets

    layers = tuple(
        LayerChoice(f"l{i}", 10, (OptionCost("a", 1.0, 1.0, 1.0), OptionCost("b", 0.0, 2.0, 2.0)))
        for i in range(4)
    )
    sol = solve(Problem(layers=layers), Budgets(size_bytes=6.0), cross_check=True)
    assert sol.total_omega == 2.0 and sol.extra["cross_check"]["agree"], sol
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("OK", sol.total_omega)
    """
)


def test_solver_runs_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "OK 2.0" in result.stdout
