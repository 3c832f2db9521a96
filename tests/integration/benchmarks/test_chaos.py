"""The chaos benchmark in a reduced form (one job of each kind, short
training): every disruption runs, and nothing is lost, doubled or stuck."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_chaos.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_chaos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_chaos"] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_chaos", None)


def test_a_reduced_chaos_run_loses_nothing(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench.main(["--jobs", "2", "--steps", "200", "--max-seconds", "400"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("SIGKILL a worker", "restart Redis", "restart trainer", "restart proxy_nas"):
        assert f"chaos: {name}" in out
    result = dict(re.findall(r"(\w+)=([\d.]+)", out.strip().splitlines()[-1]))
    assert int(result["jobs_submitted"]) >= 3
    assert result["jobs_lost"] == result["duplicate_results"] == result["stuck_running"] == "0"
    assert float(result["p99_recovery_s"]) > 0


def test_bad_arguments_exit_2(bench: ModuleType) -> None:
    assert bench.main(["--jobs", "0"]) == 2
