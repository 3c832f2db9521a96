"""Checks at submission that need the model, and the budget path through the solver.

A search is refused before anything is stored when its first trial could not
run (unknown layers, data that does not fit the model, distillation without
a trained teacher): the trainer's own :func:`trainer_svc.public.validate`
judges one trial request.

With budgets instead of a configuration, the configuration comes from the
solver service (bitmesh.client.Client.solve) over a problem built from the
model's per-layer costs. Sensitivities are not part of the request, so the
Omega of an option is a documented proxy: uniform sensitivity, Omega_l(f) =
||Q_f(W_l) - W_l||^2 (METHODS.md section 3 with every normalised trace 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bitmesh.errors import FailedPrecondition
from bitmesh.formats import QuantOption, parse_option
from proxy_nas_svc.space import Categorical, ParamValue
from proxy_nas_svc.spec import SearchRequest
from proxy_nas_svc.trial import trial_request

if TYPE_CHECKING:
    from bitmesh.client import Client
    from bitmesh.models.loading import ModelSpec
    from bitmesh.v1 import common_pb2, solver_pb2

DEFAULT_CANDIDATES = ("int4", "int8")


def validate_search(search: SearchRequest) -> None:
    """Raise what the first trial would raise (with distillation on, if the
    space allows it). A program file is judged in the sandbox, never loaded
    here (the trainer's submission check)."""
    from trainer_svc.public import validate

    params: dict[str, ParamValue] = {}
    hp = search.space.get("distillation")
    if (
        hp is not None
        and isinstance(hp.domain, Categorical)
        and any(c.strip().lower() in ("true", "1", "yes", "on") for c in hp.domain.choices)
    ):
        params["distillation"] = True
    validate(trial_request(search, params, search.fidelity[0]))


def budget_problem(model_spec: ModelSpec, candidates: Sequence[QuantOption]) -> solver_pb2.Problem:
    """The solver's problem for ``model_spec``: costs per layer and option, uniform-sensitivity Omega.

    Omega reads the weights. A program file's are read in the sandbox child
    (:func:`bitmesh.models.sandbox.vet_weight_errors`), under its caps, so
    this process never loads the program; an architecture is built here."""
    from bitmesh.costs import option_costs
    from bitmesh.models.layer_cache import layers_of
    from bitmesh.models.model_cache import load_model_for_reading
    from bitmesh.models.sandbox import vet_weight_errors
    from bitmesh.models.sandbox.table import layer_weight_errors
    from bitmesh.rpc.convert import costs_to_pb, option_to_pb
    from bitmesh.v1 import solver_pb2

    vetted = vet_weight_errors(model_spec, candidates)
    if vetted is not None:
        layers, errors = list(vetted[0].layers), vetted[1]
    else:
        model = load_model_for_reading(model_spec)
        layers = layers_of(model, model_spec)
        errors = layer_weight_errors(model, layers, candidates)
    problem = solver_pb2.Problem(name=f"proxy-nas:{model_spec.name_or_path}")
    for layer, layer_errors in zip(layers, errors, strict=True):
        options = [
            solver_pb2.ProblemOption(
                key=option.key,
                option=option_to_pb(option),
                omega=omega,
                costs=costs_to_pb(
                    option_costs(
                        layer.parameters,
                        layer.macs,
                        option,
                        layer.output_channels,
                        weight_shape=layer.weight_shape,
                    )
                ),
                weight_bits=option.weight_bits,
            )
            for option, omega in zip(candidates, layer_errors, strict=True)
        ]
        problem.layers.append(
            solver_pb2.ProblemLayer(name=layer.name, parameters=layer.parameters, options=options)
        )
    return problem


def solve_budgets(
    client: Client,
    model_spec: ModelSpec,
    budgets: common_pb2.Budgets,
    candidates: Sequence[QuantOption] = (),
) -> dict[str, QuantOption]:
    """The configuration the solver service picks under ``budgets``."""
    from bitmesh.v1 import solver_pb2

    options = list(candidates) or [parse_option(name) for name in DEFAULT_CANDIDATES]
    problem = budget_problem(model_spec, options)
    solution = client.solve(solver_pb2.SolveRequest(problem=problem, budgets=budgets))
    if solution.status == solver_pb2.SOLVE_STATUS_INFEASIBLE:
        raise FailedPrecondition(
            "no configuration of the candidate options meets the budgets: loosen them or "
            f"add narrower candidates (tried {', '.join(o.key for o in options)})"
        )
    by_key = {o.key: o for o in options}
    return {
        a.layer: by_key.get(a.option_key) or parse_option(a.option_key) for a in solution.assignment
    }
