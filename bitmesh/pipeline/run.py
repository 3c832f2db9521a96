"""``run_pipeline``: the stages of ``bitmesh run`` as one table walked by one
loop, resumable through a stage cache.

Each :class:`Stage` is a name, the inputs that key its cache entry, the
function that runs it, and when it applies. The pretrained path (the FP32
stage evaluates the given model, which is the teacher) and the from-scratch
path (it trains one) are the same table: only the FP32 stage's function
looks at which it is.

Order matters for bad input: the first stage's job is refused at submission
when the model, its weights or the data do not fit (nothing is queued), and
the solver runs before any quantized training, so budgets no configuration
meets stop the run with the solver's explanation (written to report.json too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitmesh.client import Client
from bitmesh.errors import BitmeshError, FailedPrecondition, InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.pipeline import report as rep
from bitmesh.pipeline import stages
from bitmesh.pipeline.cache import StageCache
from bitmesh.pipeline.file_size import check_file_size, file_size_report
from bitmesh.pipeline.inputs import ResolvedInputs, resolve_inputs
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.stages import Progress
from bitmesh.warm import warm_in_background

log = logging.getLogger(__name__)

#: The uniform neighbours every report shows: label -> option key.
BASELINES = {"uniform INT8": "int8", "uniform INT4": "int4"}
#: What the run's last steps import (the plots, the export and its check):
#: about 4 s of CPU on the shared 2-core machine (matplotlib 1.5 s, the ONNX
#: exporter and onnxscript 3 s), imported while the run waits on the mesh
#: instead of after it.
LAST_STEP_MODULES = (
    "bitmesh.pipeline.plots",
    "bitmesh.pipeline.export",
    "onnxscript",
    "onnxruntime",
    "torch.onnx",
)
_LABELS = {"lcpaq": "LCPAQ", "fliqs": "FLIQS"}


def _quiet(stage: str, fraction: float, message: str) -> None:
    log.debug("%s %.0f%% %s", stage, fraction * 100, message)


class BudgetsInfeasible(FailedPrecondition):
    """The solver found no configuration within the budgets."""


@dataclass
class RunContext:
    """What every stage reads: the request, its resolved inputs, the results so far."""

    client: Client
    request: PipelineRequest
    inputs: ResolvedInputs
    progress: Progress
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def fp32(self) -> dict[str, Any]:
        return self.results["fp32"]

    def model_key(self) -> dict[str, Any]:
        """The FP32 model every later stage starts from, by content."""
        return {"fp32": self.fp32["weights_sha256"], "model": self.inputs.identity()}


@dataclass(frozen=True)
class Stage:
    """One row of the table: ``key`` gives the inputs that key its cache entry
    (None: never cached, e.g. the export, whose output is a file)."""

    name: str
    key: Callable[[RunContext], dict[str, Any]] | None
    run: Callable[[RunContext], dict[str, Any]]
    when: Callable[[RunContext], bool] = lambda ctx: True


# -- the stages' functions ------------------------------------------------------


def _fp32(ctx: RunContext) -> dict[str, Any]:
    """Evaluate the given model (no training; it is the teacher), or train one."""
    request, inputs = ctx.request, ctx.inputs
    if not inputs.pretrained:
        result = stages.follow_training(
            ctx.client, stages.fp32_request(request, inputs), "fp32", ctx.progress
        )
        return {**result, "trained": True, "teacher": "trained from scratch"}
    result = stages.follow_training(
        ctx.client, stages.evaluation_request(request, inputs), "fp32", ctx.progress
    )
    given = inputs.weights_sha256 or inputs.model_sha256
    return {
        **result,
        "trained": False,
        "steps_done": 0,
        "teacher": "the given model",
        # Later stages start from (and distil from) the user's own file.
        "weights_path": inputs.weights,
        "weights_sha256": given,
    }


def _fp32_key(ctx: RunContext) -> dict[str, Any]:
    key: dict[str, Any] = {"model": ctx.inputs.identity(), "pretrained": ctx.inputs.pretrained}
    if not ctx.inputs.pretrained:
        key |= {"steps": ctx.request.fp32_steps, "lr": ctx.request.learning_rate}
    return key | {"seed": ctx.request.seed}


def _sensitivity(ctx: RunContext) -> dict[str, Any]:
    return stages.run_sensitivity(
        ctx.client, ctx.request, ctx.inputs, ctx.fp32["weights_path"], ctx.progress
    )


def _sensitivity_key(ctx: RunContext) -> dict[str, Any]:
    request = ctx.request
    return ctx.model_key() | {
        "options": list(request.options),
        "samples": request.sensitivity_samples,
        "subset": request.sensitivity_subset,
        "seed": request.seed,
    }


def _solver(ctx: RunContext) -> dict[str, Any]:
    try:
        return stages.run_solver(ctx.client, ctx.request, ctx.results["sensitivity"], ctx.progress)
    except FailedPrecondition as exc:
        raise BudgetsInfeasible(exc.message) from None


def _solver_key(ctx: RunContext) -> dict[str, Any]:
    request = ctx.request
    return {
        "sensitivity": ctx.results["sensitivity"]["job_id"],
        "budgets": request.budgets,
        "profile": request.latency_profile,
        "points": request.frontier_points,
        "accounting": request.size_accounting,
    }


def _uniform_fit(ctx: RunContext) -> dict[str, Any]:
    return stages.uniform_fits(ctx.client, ctx.request, ctx.results["sensitivity"], ctx.progress)


def _qat_key(ctx: RunContext, **what: Any) -> dict[str, Any]:
    request = ctx.request
    return ctx.model_key() | what | {"steps": request.qat_steps, "seed": request.seed}


def _uniform(stage: str, key: Callable[[RunContext], str | None]) -> Stage:
    """QAT of one option on every layer, with the same steps as the result."""

    def run(ctx: RunContext) -> dict[str, Any]:
        given = key(ctx)
        assert given is not None
        option = parse_option(given).key  # "int4" and "int4/int4" are one option
        for earlier, result in ctx.results.items():
            if result.get("uniform") == option and earlier != stage:
                return {**result, "reused_from": earlier}  # trained already: same job
        request = stages.qat_request(
            ctx.request, ctx.inputs, ctx.fp32["weights_path"], uniform=option
        )
        result = stages.follow_training(ctx.client, request, stage, ctx.progress)
        return {**result, "uniform": option}

    return Stage(
        stage,
        lambda ctx: _qat_key(ctx, uniform=key(ctx), lr=ctx.request.qat_learning_rate),
        run,
        when=lambda ctx: key(ctx) is not None,
    )


def _best_uniform_key(ctx: RunContext) -> str | None:
    best = ctx.results["uniform_fit"]["best"]
    return str(best) if best is not None else None


def _config(ctx: RunContext) -> dict[str, str]:
    return dict(ctx.results["solver"]["solution"]["config"])


def _proxy_search(ctx: RunContext) -> dict[str, Any]:
    return stages.run_proxy_search(
        ctx.client, ctx.request, ctx.inputs, ctx.fp32["weights_path"], _config(ctx), ctx.progress
    )


def _proxy_key(ctx: RunContext) -> dict[str, Any]:
    request = ctx.request
    return ctx.model_key() | {
        "config": _config(ctx),
        "trials": request.proxy_trials,
        "rates": list(request.proxy_learning_rates),
        "steps": request.proxy_steps,
        "seed": request.seed,
    }


def _lcpaq_rate(ctx: RunContext) -> float:
    proxy = ctx.results.get("proxy_search")
    return float(proxy["learning_rate"]) if proxy else ctx.request.qat_learning_rate


def _lcpaq(ctx: RunContext) -> dict[str, Any]:
    request = stages.qat_request(
        ctx.request,
        ctx.inputs,
        ctx.fp32["weights_path"],
        config=_config(ctx),
        learning_rate=_lcpaq_rate(ctx),
    )
    return stages.follow_training(ctx.client, request, "lcpaq", ctx.progress)


def _fliqs(ctx: RunContext) -> dict[str, Any]:
    request = stages.search_request(ctx.request, ctx.inputs, ctx.fp32["weights_path"])
    return stages.follow_training(ctx.client, request, "fliqs", ctx.progress)


def _fliqs_key(ctx: RunContext) -> dict[str, Any]:
    request = ctx.request
    return ctx.model_key() | {
        "budgets": request.budgets,
        "options": list(request.options),
        "steps": request.search_steps,
        "lr": request.qat_learning_rate,
        "accounting": request.size_accounting,
        "seed": request.seed,
    }


def _uses(method: str) -> Callable[[RunContext], bool]:
    return lambda ctx: method in ctx.request.methods


STAGES: tuple[Stage, ...] = (
    Stage("fp32", _fp32_key, _fp32),
    Stage("sensitivity", _sensitivity_key, _sensitivity),
    Stage("solver", _solver_key, _solver),
    Stage("uniform_fit", lambda ctx: _solver_key(ctx) | {"uniform": True}, _uniform_fit),
    *(_uniform(key, lambda ctx, key=key: key) for key in BASELINES.values()),  # type: ignore[misc]
    _uniform("best_uniform", _best_uniform_key),
    Stage(
        "proxy_search",
        _proxy_key,
        _proxy_search,
        when=lambda ctx: "lcpaq" in ctx.request.methods and ctx.request.proxy_trials > 0,
    ),
    Stage(
        "lcpaq",
        lambda ctx: _qat_key(ctx, config=_config(ctx), lr=_lcpaq_rate(ctx)),
        _lcpaq,
        when=_uses("lcpaq"),
    ),
    Stage("fliqs", _fliqs_key, _fliqs, when=_uses("fliqs")),
)


def _walk(
    table: tuple[Stage, ...], ctx: RunContext, cache: StageCache, timings: dict[str, float]
) -> None:
    """Run each applicable stage (or take it from the cache), timing each."""
    for stage in table:
        if not stage.when(ctx):
            continue
        start = time.monotonic()
        if stage.key is None:
            result = stage.run(ctx)
        else:
            result = cache.run(stage.name, stage.key(ctx), lambda stage=stage: stage.run(ctx))  # type: ignore[misc]
        timings[stage.name] = time.monotonic() - start
        ctx.results[stage.name] = result


# -- the run --------------------------------------------------------------------


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
    solver's explanation) or a service job fails; InvalidArgument / NotFound
    when the model, weights or data are unusable (before anything is queued).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out / "stages")
    timings: dict[str, float] = {}
    started = time.monotonic()
    inputs = resolve_inputs(request, client.settings.artifact_root, client.settings.tenant)
    ctx = RunContext(client, request, inputs, progress or _quiet)
    report: dict[str, Any] = {
        "inputs": request.to_dict(),
        "resolved": inputs.to_dict(),
        "versions": rep.versions(),
        "status": "running",
        "stages": ctx.results,
        "timings": timings,
        "notes": ctx.notes,
    }
    timings["resolve"] = time.monotonic() - started
    _check_export_support(request, report, out)
    try:
        _walk(STAGES[:1], ctx, cache, timings)  # the FP32 stage
        # After the first job, during the run's longest wait (sensitivity), and
        # whether or not a stage comes from the cache: importing in the
        # background while the FP32 job ran took the client's GIL and CPU from
        # that job's submission and watch (bench_pipeline: fp32 overhead
        # 1.93 s -> 1.30 s).
        warm_in_background(LAST_STEP_MODULES)
        _walk(STAGES[1:], ctx, cache, timings)
    except BudgetsInfeasible as exc:
        report["status"] = "infeasible"
        report["error"] = exc.message
        _write(out, report)
        raise FailedPrecondition(
            f"the budgets cannot be met; nothing was trained beyond FP32. Solver: {exc.message}"
        ) from None
    _summarise(ctx, report)
    _walk((Stage("export", None, lambda ctx: _export(ctx, report, out)),), ctx, cache, timings)
    report["onnx"] = ctx.results.pop("export")
    _check_file(report, request, out)

    report["status"] = "ok"
    report["cached_stages"] = cache.hits
    _write(out, report)  # first: it stands if a plot fails
    writing = time.monotonic()
    _write_outputs(out, report)
    timings["report"] = time.monotonic() - writing
    timings["total"] = time.monotonic() - started
    _write(out, report)
    return report


def _write_outputs(out: Path, report: dict[str, Any]) -> None:
    """The plots and the summary (``report.json`` is written again after,
    with this step's time in it)."""
    from bitmesh.pipeline.plots import plot_frontier, plot_layers

    plot_frontier(report, out / "frontier.png")
    plot_layers(report, out / "layers.png")
    (out / "summary.md").write_text(rep.summary_markdown(report))


def _summarise(ctx: RunContext, report: dict[str, Any]) -> None:
    """The trained rows, the baselines, the chosen result and the comparisons."""
    results, request = ctx.results, ctx.request
    fp32 = results["fp32"]
    report["teacher"] = {
        "given": not fp32["trained"],
        "weights_sha256": fp32["weights_sha256"],
        "text": fp32["teacher"],
    }
    if request.proxy_trials == 0 and "lcpaq" in request.methods:
        ctx.notes.append(
            "LCPAQ's proxy search was skipped (proxy_trials = 0): QAT used learning "
            f"rate {request.qat_learning_rate:g}"
        )
    trained: dict[str, Any] = {"FP32": _row(fp32)}
    report["baselines"] = {}
    for name, key in BASELINES.items():
        trained[name] = _row(results[key])
        report["baselines"][name] = {
            "costs": results[key]["costs"],
            "omega": stages.uniform_omega(results["sensitivity"], parse_option(key).key),
        }
    report["trained"] = trained
    candidates = {m: results[m] for m in request.methods}
    chosen = _choose(request, candidates, results["solver"], report)
    fit = results["uniform_fit"]
    report["best_uniform"] = {"option": fit["best"], "fits": fit["fits"]}
    comparisons = {
        "vs_int4": rep.compare_with(chosen, trained["uniform INT4"], "uniform INT4"),
        "vs_int8": rep.compare_with(chosen, trained["uniform INT8"], "uniform INT8"),
    }
    if fit["best"] is not None:
        label = rep.best_uniform_label(fit["best"])
        trained[label] = _row(results["best_uniform"])
        comparisons["vs_best_uniform"] = rep.compare_with(chosen, trained[label], label)
        report["best_uniform"] |= {
            "accuracy": results["best_uniform"]["accuracy"],
            "costs": results["best_uniform"]["costs"],
        }
    report["comparisons"] = comparisons
    report["verdict"] = rep.verdict(comparisons.get("vs_best_uniform"), fit["best"])


def _row(result: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": result["accuracy"], "loss": result.get("loss"), "costs": result["costs"]}


def _export(ctx: RunContext, report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Export and verify the chosen result (its artifacts stand if it cannot be)."""
    from bitmesh.pipeline.export import export_result
    from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb

    ctx.progress("export", 0.0, "ONNX export")
    chosen = ctx.results[report["result"]["method"]]
    try:
        model = model_spec_from_pb(ctx.inputs.model_ref(""))
        test = dataset_spec_from_pb(ctx.inputs.dataset_ref(), split="test").eval_split()
        onnx = export_result(model, chosen["weights_path"], test, out / "model.onnx")
    except BitmeshError as exc:
        onnx = {"export": {"exported": False, "error": exc.message}, "verify": None}
    ctx.progress("export", 1.0, "done")
    return onnx


def _check_file(report: dict[str, Any], request: PipelineRequest, out: Path) -> None:
    """The exported file's weight bytes against the predicted and budgeted ones."""
    export = report["onnx"]["export"]
    if not (export.get("exported", False) and "weight_bytes" in export):
        return
    costs = report["result"]["costs"]
    sizes = file_size_report(export, costs, request.budgets, request.size_accounting)
    report["onnx"]["file_size"] = sizes
    if not sizes["ok"]:
        report["status"] = "file_exceeds_budget"
        report["error"] = sizes["message"]
        _write(out, report)
        check_file_size(sizes)


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
) -> dict[str, Any]:
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
        report["trained"][_LABELS[method]] = _row(result)
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
    return chosen
