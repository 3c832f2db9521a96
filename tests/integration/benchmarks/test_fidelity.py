"""The fidelity benchmark in a reduced form (one seed, one budget, a twentieth of
the steps): every method is in the report, its numbers are consistent, an
interrupted run resumes from its stages, and bad input exits 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_fidelity.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fidelity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp: Path, *extra: str) -> list[str]:
    return [
        "--seeds", "1", "--budgets", "bops_w3a4", "--scale", "0.05", "--workers", "1",
        "--work", str(tmp / "work"), "--report", str(tmp / "fidelity.md"),
        "--rows", str(tmp / "rows.json"), *extra,
    ]  # fmt: skip


def test_reduced_run_reports_every_method_consistently_and_resumes(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fidelity.protocol import METHODS, REGIMES, VARIANTS

    # Cut short after the methods (no variants), then run whole: the second
    # run takes the seed's preparation and the budget's methods from the
    # stage cache and computes only the variants.
    assert bench.main(_args(tmp_path, "--no-variants")) == 0
    assert "resumed" not in capsys.readouterr().out
    assert bench.main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "resumed: 2 stages from the cache" in out
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT ")
    values = dict(item.split("=") for item in result.split()[1:])
    for key in ("lcpaq_minus_uniform_ptq", "lcpaq_minus_uniform_qat", "lcpaq_minus_random",
                "lcpaq_minus_shuffled", "fliqs_minus_uniform", "omega_spearman"):  # fmt: skip
        assert values[key] != "nan", key
        float(values[key])

    data = json.loads((tmp_path / "rows.json").read_text())
    limit = data["limits"]["bops_w3a4"]
    rows = data["rows"]
    seen = {(r["method"], r["regime"]) for r in rows}
    for method in METHODS:
        for regime in REGIMES:
            assert (method, regime) in seen, (method, regime)
    assert {(v, "qat") for v in VARIANTS} <= seen
    assert len(rows) == len(seen)  # one row per method and regime: nothing computed twice
    for row in rows:
        assert row["cost"] == pytest.approx(row["bops"])
        assert 0 <= row["accuracy"] <= 1
        if row["method"] == "uniform_above":
            assert row["cost"] > limit and not row["meets_budget"]
        elif row["method"] != "fliqs":  # the search's budget is a target, not a constraint
            assert row["cost"] <= limit * (1 + 1e-9) and row["meets_budget"], row
    for row in (r for r in rows if r["method"] == "random"):
        assert len(row["runs"]) == 5
        assert all(0.98 * limit <= run["cost"] <= limit * (1 + 1e-9) for run in row["runs"])

    report = (tmp_path / "fidelity.md").read_text()
    for method in (*METHODS, *VARIANTS):
        assert f"| {method} |" in report, method
    assert result in report
    assert (tmp_path / "fidelity.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--weight-formats", "int2,int9"), "int9"),
        (("--max-bops", "1000"), "below every configuration"),
        (("--budgets", "bops_nowhere"), "unknown budget bops_nowhere"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    bench: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    assert bench.main(_args(tmp_path, *extra)) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "work" / "stages").exists()


def test_interval_and_rank_correlation_match_their_textbook_values(bench: ModuleType) -> None:
    from fidelity.stats import interval, spearman

    # mean 7/3, sd 1.5275, t(0.975, 2) = 4.3027: half-width 3.7946
    iv = interval([1.0, 2.0, 4.0])
    assert iv.mean == pytest.approx(7 / 3)
    assert iv.half_width == pytest.approx(3.7946, abs=1e-4)
    assert iv.low < iv.mean < iv.high and iv.excludes_zero() is False
    assert interval([5.0]).half_width == 0
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)  # tied ranks 1.5, 1.5, 3
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
