"""The service calls of the stages: build the request, drive the service,
summarise.

Summaries are plain JSON-able dicts (what the stage cache stores and the
report embeds); each carries ``work_seconds``, the time the service itself
reports working (what the wall time is compared with to see the mesh's
overhead). Every model and data reference comes from one
:class:`~bitmesh.pipeline.inputs.ResolvedInputs`. Torch-free: the services
do the training and analysis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bitmesh.artifacts import ArtifactStore
from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition
from bitmesh.formats import get_format, parse_option
from bitmesh.pipeline.inputs import ResolvedInputs
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.rpc.convert import (
    option_from_pb,
    option_to_pb,
    size_accounting_from_pb,
    size_accounting_to_pb,
)
from bitmesh.v1 import common_pb2, proxy_nas_pb2, sensitivity_pb2, solver_pb2, trainer_pb2

#: ``progress(stage, fraction 0..1, message)``: what a stage reports while it runs.
Progress = Callable[[str, float, str], None]

_TERMINAL = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}
AXES: dict[str, tuple[Any, str]] = {
    "max_bops": (common_pb2.COST_AXIS_BOPS, "bops"),
    "max_size_bytes": (common_pb2.COST_AXIS_SIZE, "size_bytes"),
    "max_latency_ms": (common_pb2.COST_AXIS_LATENCY, "latency_ms"),
    "max_avg_weight_bits": (common_pb2.COST_AXIS_AVG_WEIGHT_BITS, "avg_weight_bits"),
}


def budgets_pb(request: PipelineRequest) -> common_pb2.Budgets:
    return common_pb2.Budgets(latency_profile=request.latency_profile, **request.budgets)


def budget_axis(request: PipelineRequest) -> str:
    """The budget the frontier is drawn against (BOPs first, then size, ...)."""
    return next(name for name in AXES if name in request.budgets)


def _costs(msg: common_pb2.LayerCosts) -> dict[str, float]:
    return {
        "size_bytes": msg.size_bytes,
        "bops": msg.bops,
        "latency_ms": msg.latency_ms,
        "scale_bytes": msg.scale_bytes,
    }


# -- training ---------------------------------------------------------------------


def _weights_path(client: Client, sha: str) -> str:
    """Where a job's weights lie: its tenant's store (the client's tenant)."""
    store = ArtifactStore(client.settings.artifact_root).for_tenant(client.settings.tenant)
    return store.local_path(sha)


def follow_training(
    client: Client, request: trainer_pb2.StartTrainingRequest, stage: str, progress: Progress
) -> dict[str, Any]:
    """Start a trainer job, report its steps, and summarise its result."""
    start = time.monotonic()
    job = client.start_training(request)
    progress(stage, 0.0, f"job {job.job_id} queued")
    for event in client.watch_training(job.job_id):
        status = event.status
        if event.total_steps and event.HasField("latest"):
            text = f"step {event.latest.step}/{event.total_steps} acc {event.latest.accuracy:.3f}"
            progress(stage, event.latest.step / event.total_steps, text)
        else:
            progress(stage, status.progress, status.stage or status.message)
        if status.state in _TERMINAL:
            break
    result = client.get_training(job.job_id)
    if result.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"stage {stage}: trainer job {job.job_id} ended "
            f"{common_pb2.JobState.Name(result.status.state)}: "
            f"{result.status.error or result.status.message}"
        )
    progress(stage, 1.0, f"accuracy {result.evaluation.accuracy:.4f}")
    # Unset when the job changed no weight (an evaluation of a given model).
    weights = result.weights.sha256 if result.HasField("weights") else ""
    return {
        "kind": result.status.kind,
        "job_id": job.job_id,
        "accuracy": result.evaluation.accuracy,
        "loss": result.evaluation.loss,
        "samples": result.evaluation.samples,
        "costs": _costs(result.evaluation.costs),
        "config": {c.layer: option_from_pb(c.option).key for c in result.config.layers},
        "weights_sha256": weights,
        "weights_path": _weights_path(client, weights) if weights else "",
        "steps_done": result.steps_done,
        "final_entropy": result.final_entropy,
        "seconds": time.monotonic() - start,
        "work_seconds": result.seconds,
    }


def training_settings(
    request: PipelineRequest, steps: int, lr: float
) -> trainer_pb2.TrainingSettings:
    return trainer_pb2.TrainingSettings(steps=steps, learning_rate=lr, seed=request.seed)


def fp32_request(
    request: PipelineRequest, inputs: ResolvedInputs
) -> trainer_pb2.StartTrainingRequest:
    """A QAT job with an empty configuration trains the float model."""
    return trainer_pb2.StartTrainingRequest(
        model=inputs.model_ref(),
        dataset=inputs.dataset_ref(),
        qat=trainer_pb2.QatSpec(),
        training=training_settings(request, request.fp32_steps, request.learning_rate),
    )


def evaluation_request(
    request: PipelineRequest, inputs: ResolvedInputs
) -> trainer_pb2.StartTrainingRequest:
    """The given model as it is: a calibration job with nothing to quantize
    runs one forward batch (no step, no update) and evaluates the float model
    on the test split, with the trainer's own loading and checks. It stores
    no weights (it changed none): the user's file stays the teacher."""
    return trainer_pb2.StartTrainingRequest(
        model=inputs.model_ref(),
        dataset=inputs.dataset_ref(),
        calibration=trainer_pb2.CalibrationSpec(calibration_batches=1),
        training=training_settings(request, 1, request.learning_rate),
    )


def qat_request(
    request: PipelineRequest,
    inputs: ResolvedInputs,
    weights: str,
    config: dict[str, str] | None = None,
    uniform: str | None = None,
    learning_rate: float | None = None,
) -> trainer_pb2.StartTrainingRequest:
    """QAT with distillation from ``weights`` (the FP32 model is the teacher;
    ``""`` = a program file's own weights)."""
    spec = trainer_pb2.QatSpec(distillation=trainer_pb2.Distillation(enabled=True))
    spec.config.CopyFrom(_config_pb(config or {}))
    if uniform is not None:
        spec.default_option.CopyFrom(option_to_pb(parse_option(uniform)))
    return trainer_pb2.StartTrainingRequest(
        model=inputs.model_ref(weights),
        dataset=inputs.dataset_ref(),
        qat=spec,
        training=training_settings(
            request, request.qat_steps, learning_rate or request.qat_learning_rate
        ),
    )


def _config_pb(config: dict[str, str]) -> common_pb2.QuantConfig:
    return common_pb2.QuantConfig(
        layers=[
            common_pb2.LayerConfig(layer=layer, option=option_to_pb(parse_option(key)))
            for layer, key in config.items()
        ]
    )


def run_proxy_search(
    client: Client,
    request: PipelineRequest,
    inputs: ResolvedInputs,
    weights: str,
    config: dict[str, str],
    progress: Progress,
) -> dict[str, Any]:
    """LCPAQ's proxy search: QAT learning rates tried on short, quarter-data
    runs of the solved configuration; the best one trains the result."""
    start = time.monotonic()
    rates = proxy_nas_pb2.Categorical(choices=[f"{r:g}" for r in request.proxy_learning_rates])
    job = client.start_tuning(
        proxy_nas_pb2.StartSearchRequest(
            model=inputs.model_ref(weights),
            dataset=inputs.dataset_ref(),
            config=_config_pb(config),
            space=[proxy_nas_pb2.Hyperparameter(name="learning_rate", categorical=rates)],
            trials=request.proxy_trials,
            fidelity=[proxy_nas_pb2.Rung(data_fraction=0.25, steps=request.proxy_steps)],
            seed=request.seed,
        )
    )
    for event in client.watch_tuning(job.job_id):
        text = event.status.stage or event.status.message
        if event.HasField("best"):
            text = f"best so far {dict(event.best.params)} score {event.best.score:.4f}"
        progress("proxy_search", event.status.progress, text)
        if event.status.state in _TERMINAL:
            break
    result = client.get_tuning(job.job_id)
    if result.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"proxy search {job.job_id} ended {common_pb2.JobState.Name(result.status.state)}: "
            f"{result.status.error or result.status.message}"
        )
    best = dict(result.best_params)
    learning_rate = float(best.get("learning_rate", request.qat_learning_rate))
    tied = {
        float(t.params["learning_rate"])
        for t in result.trials
        if "learning_rate" in t.params and abs(t.score - result.best_score) <= 1e-12
    }
    if request.qat_learning_rate in tied:
        # The proxy cannot tell these apart: keep the default rather than a coin toss.
        learning_rate = request.qat_learning_rate
    progress("proxy_search", 1.0, f"best {best}, learning rate {learning_rate:g}")
    return {
        "job_id": job.job_id,
        "best_params": best,
        "best_score": result.best_score,
        "tied_learning_rates": sorted(tied),
        "learning_rate": learning_rate,
        "trials": [
            {"params": dict(t.params), "score": t.score, "steps": t.training_steps}
            for t in result.trials
        ],
        "kendall_tau": result.quality.kendall_tau,
        "seconds": time.monotonic() - start,
        # The study drives its trials itself: its own time is the job's life.
        "work_seconds": _job_seconds(result.status),
    }


def _job_seconds(status: common_pb2.JobStatus) -> float:
    return max(
        0.0, status.updated.ToDatetime().timestamp() - status.created.ToDatetime().timestamp()
    )


def search_request(
    request: PipelineRequest, inputs: ResolvedInputs, weights: str
) -> trainer_pb2.StartTrainingRequest:
    """FLIQS one-shot search at the BOPs (else size) budget, from the FP32 weights."""
    bops = "max_bops" in request.budgets
    spec = trainer_pb2.SearchSpec(
        formats=[common_pb2.NumericFormat(name=get_format(o).name) for o in request.options],
        target_axis=common_pb2.COST_AXIS_BOPS if bops else common_pb2.COST_AXIS_SIZE,
        cost_target=request.budgets["max_bops" if bops else "max_size_bytes"],
        one_sided=True,
        size_accounting=size_accounting_to_pb(request.size_accounting),
    )
    return trainer_pb2.StartTrainingRequest(
        model=inputs.model_ref(weights),
        dataset=inputs.dataset_ref(),
        search=spec,
        training=training_settings(request, request.search_steps, request.qat_learning_rate),
    )


# -- sensitivity ------------------------------------------------------------------


def run_sensitivity(
    client: Client,
    request: PipelineRequest,
    inputs: ResolvedInputs,
    weights: str,
    progress: Progress,
) -> dict[str, Any]:
    """Per-layer traces and the Omega/costs of every option, on the FP32 weights
    (over ``sensitivity_subset`` training samples)."""
    start = time.monotonic()
    job = client.start_analysis(
        sensitivity_pb2.StartAnalysisRequest(
            model=inputs.model_ref(weights),
            dataset=inputs.dataset_ref(subset=request.sensitivity_subset),
            options=[option_to_pb(parse_option(o)) for o in request.options],
            settings=sensitivity_pb2.EstimatorSettings(
                max_samples=request.sensitivity_samples, seed=request.seed
            ),
        )
    )
    for event in client.watch_analysis(job.job_id):
        progress("sensitivity", event.status.progress, event.status.stage or "queued")
        if event.status.state in _TERMINAL:
            break
    result = client.get_analysis(job.job_id)
    if result.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"sensitivity job {job.job_id} ended "
            f"{common_pb2.JobState.Name(result.status.state)}: {result.status.error}"
        )
    layers = []
    for layer in result.report.layers:
        layers.append(
            {
                "name": layer.layer.name,
                "kind": layer.layer.kind,
                "parameters": layer.layer.parameters,
                "macs": layer.layer.macs,
                "trace": layer.trace,
                "normalized_trace": layer.normalized_trace,
                "standard_error": layer.standard_error,
                "options": {
                    p.option_key: {
                        "omega": p.omega,
                        "weight_error_sq": p.weight_error_sq,
                        "costs": _costs(p.costs),
                        "weight_bits": option_from_pb(p.option).weight_bits,
                    }
                    for p in layer.perturbations
                },
            }
        )
    progress("sensitivity", 1.0, f"{len(layers)} layers")
    return {
        "job_id": job.job_id,
        "model_hash": result.report.model_hash,
        "layers": layers,
        "seconds": time.monotonic() - start,
        "work_seconds": result.report.seconds,
    }


# -- solver -----------------------------------------------------------------------


def problem_from(
    sensitivity: dict[str, Any],
    name: str,
    size_accounting: str = "weights_and_scales",
    only: str | None = None,
) -> solver_pb2.Problem:
    """The solver's problem: one layer per analysed layer, one option per key
    (``only``: that one option on every layer, a uniform configuration);
    ``size_accounting`` says what its size and bits budgets count."""
    problem = solver_pb2.Problem(name=name, size_accounting=size_accounting_to_pb(size_accounting))
    for layer in sensitivity["layers"]:
        entry = solver_pb2.ProblemLayer(name=layer["name"], parameters=layer["parameters"])
        for key, data in layer["options"].items():
            if only is not None and key != only:
                continue
            entry.options.append(
                solver_pb2.ProblemOption(
                    key=key,
                    option=option_to_pb(parse_option(key)),
                    omega=data["omega"],
                    costs=common_pb2.LayerCosts(**data["costs"]),
                    weight_bits=data["weight_bits"],
                )
            )
        problem.layers.append(entry)
    return problem


def solution_dict(solution: solver_pb2.Solution) -> dict[str, Any]:
    return {
        "status": solver_pb2.SolveStatus.Name(solution.status).removeprefix("SOLVE_STATUS_"),
        "gap": solution.gap,
        "config": {a.layer: a.option_key for a in solution.assignment},
        "total_omega": solution.total_omega,
        "costs": _costs(solution.totals),
        "avg_weight_bits": solution.avg_weight_bits,
        "size_accounting": size_accounting_from_pb(solution.size_accounting),
        "engine": solution.engine,
        "seconds": solution.seconds,
    }


def run_solver(
    client: Client, request: PipelineRequest, sensitivity: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """Register, draw the frontier on the budget axis, solve at the budgets.

    An infeasible budget raises the solver's FailedPrecondition (with its
    explanation) before any quantized training starts.
    """
    reply = client.register_problem(
        problem_from(sensitivity, f"{request.model}-pipeline", request.size_accounting)
    )
    progress("solver", 0.2, f"problem {reply.problem_id}")
    axis_name = budget_axis(request)
    others = {k: v for k, v in request.budgets.items() if k != axis_name}
    frontier = client.frontier(
        solver_pb2.FrontierRequest(
            problem_id=reply.problem_id,
            axis=AXES[axis_name][0],
            constraints=common_pb2.Budgets(latency_profile=request.latency_profile, **others),
            points=request.frontier_points,
        )
    )
    progress("solver", 0.6, f"{len(frontier.points)} frontier points")
    solution = client.solve(
        solver_pb2.SolveRequest(problem_id=reply.problem_id, budgets=budgets_pb(request))
    )
    progress("solver", 1.0, f"Omega {solution.total_omega:.4g}")
    return {
        "work_seconds": solution.seconds + sum(p.seconds for p in frontier.points),
        "problem_id": reply.problem_id,
        "axis": axis_name,
        "frontier": [solution_dict(p) for p in frontier.points],
        "solution": solution_dict(solution),
    }


def uniform_omega(sensitivity: dict[str, Any], key: str) -> float | None:
    """Total Omega of one option on every layer (None if a layer lacks it)."""
    total = 0.0
    for layer in sensitivity["layers"]:
        if key not in layer["options"]:
            return None
        total += layer["options"][key]["omega"]
    return total


def uniform_fits(
    client: Client, request: PipelineRequest, sensitivity: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """Which uniform configurations (one option on every layer) fit the budgets,
    and the best of them: the lowest total Omega, the solver's own objective.

    The solver judges each one at the run's budgets, with the same latency
    profile and size accounting as the mixed result, so "fits" means the same
    thing on both sides of the comparison.
    """
    keys = sorted({key for layer in sensitivity["layers"] for key in layer["options"]})
    fits: dict[str, dict[str, Any]] = {}
    work = 0.0
    for index, key in enumerate(keys):
        if any(key not in layer["options"] for layer in sensitivity["layers"]):
            fits[key] = {"fits": False, "reason": "not an option of every layer"}
            continue
        problem = problem_from(
            sensitivity, f"{request.model}-uniform-{key}", request.size_accounting, only=key
        )
        try:
            solution = client.solve(
                solver_pb2.SolveRequest(problem=problem, budgets=budgets_pb(request))
            )
        except FailedPrecondition as exc:
            fits[key] = {"fits": False, "reason": exc.message}
            continue
        work += solution.seconds
        found = solution_dict(solution)
        fits[key] = {"fits": found["status"] != "INFEASIBLE", **found}
        progress("uniform_fit", (index + 1) / len(keys), f"{key}: fits")
    fitting = [key for key, fit in fits.items() if fit["fits"]]
    best = min(fitting, key=lambda k: (fits[k]["total_omega"], k)) if fitting else None
    progress("uniform_fit", 1.0, f"best uniform fit: {best or 'none'}")
    return {"fits": fits, "best": best, "work_seconds": work}
