"""`bitmesh run` end to end on digits through real services: a real Redis, a
real Celery worker (the trainer's), and the trainer, sensitivity and solver
services in process. Checks the report as issue 7 asks, then that a rerun
skips every finished stage and that an impossible budget stops before QAT."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.run import run_pipeline
from bitmesh.v1 import common_pb2, sensitivity_pb2

pytestmark = pytest.mark.integration

REDIS_DB = 13


def _uniform_bops(client: Client, key: str) -> float:
    """Total BOPs of one option on every layer, priced by the sensitivity service."""
    from bitmesh.formats import parse_option
    from bitmesh.rpc.convert import option_to_pb

    reply = client.list_layers(
        sensitivity_pb2.ListLayersRequest(
            model=common_pb2.ModelRef(architecture="digits_cnn", input_shape=[1, 8, 8]),
            options=[option_to_pb(parse_option(key))],
        )
    )
    return sum(layer.options[0].costs.bops for layer in reply.layers)


def test_pipeline_meets_budget_beats_int4_and_exports(client: Client, tmp_path: Path) -> None:
    int4, int8 = _uniform_bops(client, "int4"), _uniform_bops(client, "int8")
    budget = int4 + 0.4 * (int8 - int4)
    # FP32 keeps its 300 steps (its accuracy is checked); QAT stages need
    # only enough steps to show the comparison's plumbing.
    request = PipelineRequest(
        model="digits_cnn", budgets={"max_bops": budget}, method="lcpaq", qat_steps=80
    )
    events: list[tuple[str, float, str]] = []
    start = time.monotonic()
    report = run_pipeline(client, request, tmp_path, lambda *e: events.append(e))
    wall = time.monotonic() - start

    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["status"] == "ok"
    for name in ("frontier.png", "layers.png", "summary.md", "model.onnx"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert {"fp32", "sensitivity", "solver", "proxy_search", "int8", "int4", "lcpaq"} <= set(
        on_disk["stages"]
    )
    proxy = on_disk["stages"]["proxy_search"]
    assert proxy["learning_rate"] in request.proxy_learning_rates and proxy["trials"]
    assert {e[0] for e in events} >= {"fp32", "sensitivity", "solver", "lcpaq", "export"}
    assert "torch" in on_disk["versions"] and on_disk["timings"]["total"] > 0

    result = on_disk["result"]
    assert result["meets_budget"] and result["costs"]["bops"] <= budget * (1 + 1e-9)
    assert int4 <= result["costs"]["bops"]
    trained = on_disk["trained"]
    assert trained["FP32"]["accuracy"] > 0.9
    print(
        "\nFIGURES",
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "budget_bops": budget,
                "accuracy": {k: v["accuracy"] for k, v in trained.items()},
                "bops": {k: v["costs"]["bops"] for k, v in trained.items()},
                "config": result["config"],
                "agreement": on_disk["onnx"]["verify"]["agreement"],
                "onnx_accuracy": on_disk["onnx"]["verify"]["onnx_accuracy"],
                "timings": on_disk["timings"],
                "proxy": {k: proxy[k] for k in ("best_params", "best_score", "trials")},
            }
        ),
    )

    vs_int4 = on_disk["comparisons"]["vs_int4"]
    assert vs_int4["baseline_has_no_more_bops"]
    assert vs_int4["beats"] or (vs_int4["shortfall"] >= 0 and "does not beat" in vs_int4["text"]), (
        vs_int4
    )
    assert vs_int4["accuracy_delta"] == pytest.approx(
        result["accuracy"] - trained["uniform INT4"]["accuracy"]
    )

    onnx = on_disk["onnx"]
    assert onnx["export"]["exported"] and onnx["export"]["checker_ok"], onnx["export"]
    assert onnx["verify"]["onnxruntime_ok"], onnx["verify"]
    assert onnx["verify"]["agreement"] >= 0.99, onnx["verify"]
    assert "uniform INT4" in (tmp_path / "summary.md").read_text()

    # A rerun finds every stage in the cache and trains nothing.
    again = run_pipeline(client, request, tmp_path)
    assert set(again["cached_stages"]) >= {"fp32", "sensitivity", "solver", "int8", "int4", "lcpaq"}
    assert again["result"]["accuracy"] == report["result"]["accuracy"]


def test_impossible_budget_stops_before_quantized_training(client: Client, tmp_path: Path) -> None:
    request = PipelineRequest(model="digits_cnn", budgets={"max_bops": 1.0})
    with pytest.raises(FailedPrecondition, match="budgets cannot be met"):
        run_pipeline(client, request, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "infeasible" and report["error"]
    assert "lcpaq" not in report["stages"] and "int4" not in report["stages"]


def test_both_methods_are_run_and_compared(client: Client, tmp_path: Path) -> None:
    int4, int8 = _uniform_bops(client, "int4"), _uniform_bops(client, "int8")
    budget = int4 + 0.4 * (int8 - int4)
    request = PipelineRequest(
        model="digits_cnn",
        budgets={"max_bops": budget},
        method="both",
        fp32_steps=150,
        qat_steps=60,
        search_steps=150,
        proxy_trials=0,
    )
    report = run_pipeline(client, request, tmp_path)
    assert {"lcpaq", "fliqs"} <= set(report["stages"])
    assert set(report["method_comparison"]) == {"lcpaq", "fliqs"}
    assert {"LCPAQ", "FLIQS"} <= set(report["trained"])
    fliqs = report["stages"]["fliqs"]
    assert fliqs["config"] and fliqs["steps_done"] > 0
    assert any("proxy search was skipped" in note for note in report["notes"])
    print("\nBOTH", json.dumps(report["method_comparison"]), report["result"]["method"])
    assert report["result"]["meets_budget"], report["result"]["budget_checks"]
    assert report["onnx"]["verify"]["agreement"] >= 0.99


def test_cli_runs_and_resumes(
    client: Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bitmesh.cli.main import main

    monkeypatch.setenv("BITMESH_ARTIFACT_ROOT", client.settings.artifact_root)
    int4, int8 = _uniform_bops(client, "int4"), _uniform_bops(client, "int8")
    argv = ["run", "--model", "digits_cnn", "--max-bops", f"{(int4 + int8) / 2:.0f}"]
    argv += ["--out", str(tmp_path), "--proxy-trials", "0", "--qat-steps", "40"]
    argv += ["--fp32-steps", "100"]  # plumbing: the CLI, its output, the resume
    for service, address in client.addresses.items():
        argv += ["--address", f"{service}={address}"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "uniform INT4" in first and "reused" not in first
    assert main(argv) == 0
    assert "reused from" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["result"]["meets_budget"] and report["status"] == "ok"


def test_block_formats_meet_a_size_budget_in_the_exported_file(
    client: Client, tmp_path: Path
) -> None:
    """MXFP4, NVFP4 and INT4-g32 under a size budget that counts their scales:
    the solver meets it, and so does the exported file's weights."""
    request = PipelineRequest(
        model="digits_cnn",
        budgets={"max_size_bytes": 12_900.0},  # uniform MXFP4 12,396 B, INT4-g32 13,392 B
        method="lcpaq",
        options=("mxfp4", "nvfp4", "int4_g32", "int8"),
        fp32_steps=150,
        qat_steps=20,
        sensitivity_samples=10,
        proxy_trials=0,
    )
    report = run_pipeline(client, request, tmp_path)
    assert report["status"] == "ok"
    solution = report["stages"]["solver"]["solution"]
    assert solution["size_accounting"] == "weights_and_scales"
    costs = solution["costs"]
    assert costs["size_bytes"] + costs["scale_bytes"] <= 12_900.0
    sizes = report["onnx"]["file_size"]
    assert sizes["ok"], sizes["message"]
    assert sizes["weight_bytes"] <= 12_900.0 + costs["scale_bytes"]
    assert abs(sizes["weight_bytes"] - sizes["predicted_bytes"]) <= costs["scale_bytes"]
    exported = {layer["layer"]: layer for layer in report["onnx"]["export"]["layers"]}
    assert all(layer["weight"] in ("blocked", "qdq") for layer in exported.values())
    assert report["onnx"]["verify"]["agreement"] >= 0.99, report["onnx"]["verify"]
