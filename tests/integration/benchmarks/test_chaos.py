"""The chaos benchmark's entry point refuses bad arguments.

A whole chaos run is not in the suite: even reduced (two jobs of each kind)
it took 235 s of the suite's 552 on the shared 2-core machine, and every
disruption it makes is proven on its own by tests/integration/durability
(Redis SIGKILLed and back, Redis down past the retry window, each service
killed mid-job, a worker lost mid-handover). Run ``benchmarks/bench_chaos.py``
for the combined figures."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_chaos.py"

pytestmark = pytest.mark.integration


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


def test_bad_arguments_exit_2(bench: ModuleType) -> None:
    assert bench.main(["--jobs", "0"]) == 2
