"""``run_pipeline``: FP32 training, sensitivity, solver, QAT/search, baselines,
ONNX export, and the output folder, resumable through a stage cache.

Order matters for bad input: the solver runs before any quantized training,
so budgets no configuration meets stop the run with the solver's
explanation (written to report.json too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bitmesh.client import Client
from bitmesh.errors import BitmeshError, FailedPrecondition, InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.pipeline import report as rep
from bitmesh.pipeline import stages
from bitmesh.pipeline.cache import StageCache
from bitmesh.pipeline.file_size import check_file_size, file_size_report
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.stages import Progress

log = logging.getLogger(__name__)

BASELINES = {"uniform INT8": "int8", "uniform INT4": "int4"}
_LABELS = {"lcpaq": "LCPAQ", "fliqs": "FLIQS"}


def _quiet(stage: str, fraction: float, message: str) -> None:
    log.debug("%s %.0f%% %s", stage, fraction * 100, message)


def _timed(
    cache: StageCache,
    timings: dict[str, float],
    stage: str,
    inputs: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    start = time.monotonic()
    result = cache.run(stage, inputs, compute)
    timings[stage] = time.monotonic() - start
    return result


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))


def run_pipeline(
    client: Client,
    request: PipelineRequest,
    out_dir: str | Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every stage (reusing finished ones) and write the output folder.

    Returns the report (also in ``report.json``). Raises FailedPrecondition
    when the budgets cannot be met (after writing the report with the
    solver's explanation) or a service job fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    show = progress or _quiet
    cache = StageCache(out / "stages")
    timings: dict[str, float] = {}
    started = time.monotonic()
    inputs = request.to_dict()
    report: dict[str, Any] = {
        "inputs": inputs,
        "versions": rep.versions(),
        "status": "running",
        "stages": {},
        "timings": timings,
        "notes": [],
        "trained": {},
        "baselines": {},
    }
    stages_out = report["stages"]
    _check_export_support(request, report, out)

    fp32 = _timed(
        cache,
        timings,
        "fp32",
        {k: inputs[k] for k in ("model", "dataset", "input_shape", "fp32_steps", "seed")}
        | {"lr": request.learning_rate},
        lambda: stages.follow_training(client, stages.fp32_request(request), "fp32", show),
    )
    stages_out["fp32"] = fp32
    weights = fp32["weights_path"]

    sensitivity = _timed(
        cache,
        timings,
        "sensitivity",
        {
            "weights": fp32["weights_sha256"],
            "options": inputs["options"],
            "samples": request.sensitivity_samples,
            "seed": request.seed,
        },
        lambda: stages.run_sensitivity(client, request, weights, show),
    )
    stages_out["sensitivity"] = sensitivity

    solver_inputs = {
        "sensitivity": sensitivity["job_id"],
        "budgets": request.budgets,
        "profile": request.latency_profile,
        "points": request.frontier_points,
    }
    try:
        solver = _timed(
            cache,
            timings,
            "solver",
            solver_inputs,
            lambda: stages.run_solver(client, request, sensitivity, show),
        )
    except FailedPrecondition as exc:
        report["status"] = "infeasible"
        report["error"] = exc.message
        _write(out, report)
        raise FailedPrecondition(
            f"the budgets cannot be met; nothing was trained beyond FP32. Solver: {exc.message}"
        ) from None
    stages_out["solver"] = solver

    report["trained"]["FP32"] = {"accuracy": fp32["accuracy"], "costs": fp32["costs"]}
    for name, key in BASELINES.items():
        stage = name.split()[-1].lower()
        result = _timed(
            cache,
            timings,
            stage,
            {
                "weights": fp32["weights_sha256"],
                "uniform": key,
                "steps": request.qat_steps,
                "lr": request.qat_learning_rate,
                "seed": request.seed,
            },
            lambda key=key, stage=stage: stages.follow_training(  # type: ignore[misc]
                client, stages.qat_request(request, weights, uniform=key), stage, show
            ),
        )
        stages_out[stage] = result
        report["trained"][name] = {"accuracy": result["accuracy"], "costs": result["costs"]}
        report["baselines"][name] = {
            "costs": result["costs"],
            "omega": stages.uniform_omega(sensitivity, parse_option(key).key),
        }

    candidates: dict[str, dict[str, Any]] = {}
    if "lcpaq" in request.methods:
        config = solver["solution"]["config"]
        lr = request.qat_learning_rate
        if request.proxy_trials:
            proxy = _timed(
                cache,
                timings,
                "proxy_search",
                {
                    "weights": fp32["weights_sha256"],
                    "config": config,
                    "trials": request.proxy_trials,
                    "rates": inputs["proxy_learning_rates"],
                    "steps": request.proxy_steps,
                    "seed": request.seed,
                },
                lambda: stages.run_proxy_search(client, request, weights, config, show),
            )
            stages_out["proxy_search"] = proxy
            lr = proxy["learning_rate"]
        else:
            report["notes"].append(
                "LCPAQ's proxy search was skipped (proxy_trials = 0): QAT used learning "
                f"rate {lr:g}"
            )
        lcpaq = _timed(
            cache,
            timings,
            "lcpaq",
            {
                "weights": fp32["weights_sha256"],
                "config": config,
                "steps": request.qat_steps,
                "lr": lr,
                "seed": request.seed,
            },
            lambda: stages.follow_training(
                client,
                stages.qat_request(request, weights, config=config, learning_rate=lr),
                "lcpaq",
                show,
            ),
        )
        stages_out["lcpaq"] = lcpaq
        candidates["lcpaq"] = lcpaq
    if "fliqs" in request.methods:
        fliqs = _timed(
            cache,
            timings,
            "fliqs",
            {
                "weights": fp32["weights_sha256"],
                "budgets": request.budgets,
                "options": inputs["options"],
                "steps": request.search_steps,
                "lr": request.qat_learning_rate,
                "seed": request.seed,
            },
            lambda: stages.follow_training(
                client, stages.search_request(request, weights), "fliqs", show
            ),
        )
        stages_out["fliqs"] = fliqs
        candidates["fliqs"] = fliqs

    chosen_method, chosen = _choose(request, candidates, solver, report)
    int4 = report["trained"]["uniform INT4"]
    report["comparisons"] = {
        "vs_int4": rep.compare_with(chosen, int4, "uniform INT4"),
        "vs_int8": rep.compare_with(chosen, report["trained"]["uniform INT8"], "uniform INT8"),
    }

    onnx_path = out / "model.onnx"
    show("export", 0.0, "ONNX export")
    start = time.monotonic()
    from bitmesh.pipeline.export import export_result

    try:
        report["onnx"] = export_result(
            request.model,
            stages.default_input_shape(request),
            chosen["weights_path"],
            request.dataset,
            onnx_path,
        )
    except BitmeshError as exc:
        # The trained artifacts stand; the report says why there is no ONNX file.
        report["onnx"] = {"export": {"exported": False, "error": exc.message}, "verify": None}
    timings["export"] = time.monotonic() - start
    show("export", 1.0, "done")
    export = report["onnx"]["export"]
    if export.get("exported", False) and "weight_bytes" in export:
        sizes = file_size_report(export, chosen["costs"], request.budgets, request.size_accounting)
        report["onnx"]["file_size"] = sizes
        if not sizes["ok"]:
            report["status"] = "file_exceeds_budget"
            report["error"] = sizes["message"]
            _write(out, report)
            check_file_size(sizes)

    report["status"] = "ok"
    report["cached_stages"] = cache.hits
    timings["total"] = time.monotonic() - started
    report["result"]["method"] = chosen_method
    _write(out, report)
    from bitmesh.pipeline.plots import plot_frontier, plot_layers

    plot_frontier(report, out / "frontier.png")
    plot_layers(report, out / "layers.png")
    (out / "summary.md").write_text(rep.summary_markdown(report))
    return report


def _check_export_support(request: PipelineRequest, report: dict[str, Any], out: Path) -> None:
    """Before any training: formats the export target cannot store in their
    own bits. With a size budget the run stops (the file could not meet it);
    without one the report notes them."""
    from bitmesh.export.support import EXPORT_TARGET, unsupported_weight_formats

    unsupported = unsupported_weight_formats(parse_option(o).weight for o in request.options)
    report["export_support"] = {"target": EXPORT_TARGET, "unsupported": unsupported}
    if not unsupported:
        return
    listed = "; ".join(unsupported.values())
    if "max_size_bytes" in request.budgets:
        report["status"] = "unsupported_format"
        report["error"] = listed
        _write(out, report)
        raise InvalidArgument(
            f"the size budget cannot be checked on the exported file: {listed}. Nothing was "
            f"trained; drop {', '.join(sorted(unsupported))} from the formats"
        )
    report["notes"].append(f"not stored in their own bits by {EXPORT_TARGET}: {listed}")


def _choose(
    request: PipelineRequest,
    candidates: dict[str, dict[str, Any]],
    solver: dict[str, Any],
    report: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Record each method's result; pick the most accurate one within budget."""
    scored = []
    for method, result in candidates.items():
        extra = {}
        if method == "lcpaq":
            extra = {
                "avg_weight_bits": solver["solution"]["avg_weight_bits"],
                "latency_ms": solver["solution"]["costs"]["latency_ms"],
            }
        checks = rep.budget_checks(result["costs"], request.budgets, extra, request.size_accounting)
        label = _LABELS[method]
        report["trained"][label] = {"accuracy": result["accuracy"], "costs": result["costs"]}
        scored.append((rep.meets(checks), result["accuracy"], method, checks))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    meets, _, method, checks = scored[0]
    chosen = candidates[method]
    report["result"] = {
        "method": method,
        "config": chosen["config"],
        "accuracy": chosen["accuracy"],
        "costs": chosen["costs"],
        "budget_checks": checks,
        "meets_budget": meets,
    }
    if len(candidates) > 1:
        report["method_comparison"] = {
            m: {"accuracy": r["accuracy"], "costs": r["costs"]} for m, r in candidates.items()
        }
    return method, chosen
