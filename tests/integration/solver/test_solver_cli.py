"""`bitmesh solve / frontier / whatif` against a real solver service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from bitmesh.cli.main import main
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import load_settings
from solver_svc.servicer import build
from tests.integration.solver.test_solver_service import make_problem

pytestmark = pytest.mark.integration


@pytest.fixture
def solver_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = load_settings(artifact_root=str(tmp_path / "art"))
    running = start_service("solver", build, settings, port=0)
    address = f"127.0.0.1:{running.port}"
    monkeypatch.setenv("BITMESH_SOLVER_ADDRESS", address)
    monkeypatch.setenv("BITMESH_ARTIFACT_ROOT", str(tmp_path / "art"))
    yield address
    running.stop(1)


def test_solve_frontier_whatif_from_the_cli(
    solver_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem_file = tmp_path / "problem.json"
    problem_file.write_text(json.dumps(json_format.MessageToDict(make_problem())))
    assert main(["solve", "--problem", str(problem_file), "--max-size", "40kB", "--json"]) == 0
    out = capsys.readouterr().out
    solution = json.loads(out[out.index("{") :])
    assert solution["status"] == "SOLVE_STATUS_OPTIMAL"
    assert solution["totals"]["size_bytes"] <= 40_000
    pid = solution["problem_id"]

    plot = tmp_path / "frontier.png"
    assert (
        main(["frontier", "--problem", pid, "--axis", "size", "--points", "8", "--plot", str(plot)])
        == 0
    )
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["whatif", "--problem", pid, "--max-size", "40kB", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["total_omega"] == pytest.approx(solution["total_omega"])

    assert main(["solve", "--problem", pid, "--max-size", "1B"]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert main(["solve", "--problem", pid, "--max-size", "six"]) == 2
