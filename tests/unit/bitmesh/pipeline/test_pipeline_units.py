"""The pipeline's pure parts: request checks, the stage cache, budget checks,
comparisons, the problem built from a sensitivity summary, summary and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bitmesh.errors import InvalidArgument
from bitmesh.pipeline import report as rep
from bitmesh.pipeline.cache import StageCache, input_key
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.stages import budget_axis, problem_from, uniform_omega

pytestmark = pytest.mark.unit


def _sensitivity() -> dict[str, Any]:
    def option(omega: float, bits: int, bops: float) -> dict[str, Any]:
        costs = {"size_bytes": bits * 10.0, "bops": bops, "latency_ms": 0.0, "scale_bytes": 4.0}
        return {"omega": omega, "weight_error_sq": omega, "costs": costs, "weight_bits": bits}

    return {
        "job_id": "s-1",
        "layers": [
            {
                "name": name,
                "kind": "conv2d",
                "parameters": 80,
                "macs": 100,
                "trace": trace,
                "normalized_trace": trace,
                "standard_error": 0.0,
                "options": {
                    "int4/int4": option(trace * 0.1, 4, 1600.0),
                    "int8/int8": option(trace * 0.01, 8, 6400.0),
                },
            }
            for name, trace in (("conv1", 2.0), ("fc", 0.5))
        ],
    }


def test_request_rejects_what_cannot_run() -> None:
    with pytest.raises(InvalidArgument, match="at least one budget"):
        PipelineRequest(model="digits_cnn")
    with pytest.raises(InvalidArgument, match="method"):
        PipelineRequest(model="digits_cnn", budgets={"max_bops": 1.0}, method="x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="latency profile"):
        PipelineRequest(model="digits_cnn", budgets={"max_latency_ms": 1.0})
    with pytest.raises(InvalidArgument, match="FLIQS"):
        PipelineRequest(model="m", budgets={"max_avg_weight_bits": 5.0}, method="fliqs")
    both = PipelineRequest(
        model="m", budgets={"max_size_bytes": 9.0, "max_bops": 1.0}, method="both"
    )
    assert both.methods == ("lcpaq", "fliqs")
    assert budget_axis(both) == "max_bops"


def test_cache_reuses_only_identical_inputs(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    assert cache.run("fp32", {"a": 1}, compute) == {"n": 1}
    assert StageCache(tmp_path).run("fp32", {"a": 1}, compute) == {"n": 1}
    assert cache.run("fp32", {"a": 2}, compute) == {"n": 2}
    assert len(calls) == 2 and cache.hits == []
    assert input_key({"a": 1, "b": 2}) == input_key({"b": 2, "a": 1})
    (tmp_path / f"fp32-{input_key({'a': 1})}.json").write_text("{cut sh")
    assert cache.run("fp32", {"a": 1}, compute) == {"n": 3}


def test_budget_checks_and_int4_comparison() -> None:
    checks = rep.budget_checks({"bops": 10.0, "size_bytes": 5.0}, {"max_bops": 10.0})
    assert checks["max_bops"]["met"] and rep.meets(checks)
    over = rep.budget_checks({"bops": 11.0}, {"max_bops": 10.0, "max_avg_weight_bits": 4.0})
    assert over["max_bops"]["met"] is False and over["max_avg_weight_bits"]["met"] is None
    assert not rep.meets(over)
    result = {"accuracy": 0.95, "costs": {"bops": 20.0}}
    worse = rep.compare_with(result, {"accuracy": 0.97, "costs": {"bops": 10.0}}, "uniform INT4")
    assert not worse["beats"] and worse["shortfall"] == pytest.approx(0.02)
    assert "does not beat uniform INT4 by 2.00 points" in worse["text"]
    better = rep.compare_with(result, {"accuracy": 0.9, "costs": {"bops": 30.0}}, "INT4")
    assert better["beats"] and not better["baseline_has_no_more_bops"]


def test_problem_has_every_layer_option_and_cost() -> None:
    sensitivity = _sensitivity()
    problem = problem_from(sensitivity, "p")
    assert [layer.name for layer in problem.layers] == ["conv1", "fc"]
    first = problem.layers[0].options
    assert [o.key for o in first] == ["int4/int4", "int8/int8"]
    assert first[0].omega == pytest.approx(0.2) and first[0].costs.bops == 1600.0
    assert first[1].weight_bits == 8 and first[1].option.weight.name == "int8"
    assert uniform_omega(sensitivity, "int4/int4") == pytest.approx(0.25)
    assert uniform_omega(sensitivity, "e4m3/e4m3") is None


def _report() -> dict[str, Any]:
    costs = {"bops": 3000.0, "size_bytes": 100.0, "latency_ms": 0.0, "scale_bytes": 0.0}
    point = {"total_omega": 0.05, "costs": costs, "avg_weight_bits": 6.0}
    return {
        "inputs": {
            "model": "m",
            "dataset": "digits",
            "method": "lcpaq",
            "budgets": {"max_bops": 4000.0},
        },
        "stages": {
            "sensitivity": _sensitivity(),
            "solver": {"axis": "max_bops", "frontier": [point], "solution": point},
        },
        "trained": {
            "FP32": {"accuracy": 0.99, "costs": costs},
            "uniform INT4": {"accuracy": 0.9, "costs": costs},
        },
        "baselines": {"uniform INT4": {"costs": costs, "omega": 0.25}},
        "result": {"method": "lcpaq", "config": {"conv1": "int8/int8"}, "meets_budget": True},
        "comparisons": {"vs_int4": {"text": "beats uniform INT4 by 3.00 points"}},
        "onnx": {
            "export": {"exported": True, "checker_ok": True},
            "verify": {"agreement": 0.995, "samples": 360, "onnx_accuracy": 0.93},
        },
        "notes": ["proxy search skipped"],
    }


def test_summary_lists_every_model_and_verdict() -> None:
    text = rep.summary_markdown(_report())
    assert "| FP32 | 0.9900 |" in text and "| uniform INT4 | 0.9000 |" in text
    assert "meets its budgets" in text and "99.50 %" in text and "proxy search skipped" in text


def test_plots_are_written(tmp_path: Path) -> None:
    from bitmesh.pipeline.plots import plot_frontier, plot_layers

    plot_frontier(_report(), tmp_path / "f.png")
    plot_layers(_report(), tmp_path / "l.png")
    for name in ("f.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_builds_the_request_from_flags() -> None:
    from bitmesh.cli.main import build_parser
    from bitmesh.cli.run_cmd import request_from

    args = build_parser().parse_args(
        [
            "run",
            "--model",
            "digits_cnn",
            "--max-bops",
            "16M",
            "--max-size",
            "20kB",
            "--method",
            "both",
            "--out",
            "x",
            "--qat-steps",
            "7",
        ]
    )
    request = request_from(args)
    assert request.budgets == {"max_bops": 16e6, "max_size_bytes": 20e3}
    assert request.method == "both" and request.qat_steps == 7
    assert request.options == ("int4", "int8", "e4m3")
    with pytest.raises(InvalidArgument, match="at least one budget"):
        request_from(build_parser().parse_args(["run", "--model", "m", "--out", "x"]))
