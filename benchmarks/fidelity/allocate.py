"""Every method's configuration at one budget, from one seed's measurements.

Costs are the shared cost model's (what the sensitivity report priced and
the trainer's evaluation reports), so "fits the budget" means the same thing
for every method. The ILP is the solver service's own ``solver_svc.solve``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bitmesh.costs import LayerCosts, budgeted_bytes
from bitmesh.formats import parse_option
from bitmesh.models.layers import LayerProfile
from fidelity.protocol import RANDOM_CONFIGS, RANDOM_WINDOW, Budget, OptionSet
from solver_svc.problem import LayerChoice, OptionCost, Problem
from solver_svc.solve import solve
from solver_svc.spec import Budgets
from trainer_svc.costing import config_costs

Config = dict[str, str]
#: Omega per layer and option key.
Omegas = dict[str, dict[str, float]]


class BudgetTooSmall(ValueError):
    """No configuration of the option set fits the budget."""


def option_cost(layer: Mapping[str, Any], key: str, axis: str) -> float:
    costs = LayerCosts(**layer["options"][key]["costs"])
    return _axis(costs, axis)


def config_cost(layers: Sequence[Mapping[str, Any]], config: Config, axis: str) -> float:
    return sum(option_cost(layer, config[layer["name"]], axis) for layer in layers)


def _axis(costs: LayerCosts, axis: str) -> float:
    return costs.bops if axis == "bops" else budgeted_bytes(costs)


def budget_limit(profiles: Sequence[LayerProfile], budget: Budget) -> float:
    """The budget's limit: the mean cost of its uniform anchors (computed
    from the layers' shapes, so it needs no trained model)."""
    costs = [
        _axis(config_costs(profiles, {p.name: parse_option(key) for p in profiles}), budget.axis)
        for key in budget.anchors
    ]
    return sum(costs) / len(costs)


def cheapest(profiles: Sequence[LayerProfile], option_set: OptionSet, axis: str) -> float:
    """The least any configuration of the set costs on ``axis``."""
    return sum(
        min(
            _axis(config_costs([p], {p.name: parse_option(k)}), axis)
            for k in option_set.option_keys()
        )
        for p in profiles
    )


def weight_omegas(layers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Omegas:
    """LCPAQ's Omega: normalised weight trace x weight error (as analysed)."""
    return {layer["name"]: {k: layer["options"][k]["omega"] for k in keys} for layer in layers}


def activation_aware_omegas(layers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Omegas:
    """HAWQ-V3's sum: the weight term plus Tr(H_a) / dim(a) x E||Q(a) - a||^2."""
    out = weight_omegas(layers, keys)
    for layer in layers:
        per_element = (layer["activation_trace"] or 0.0) / layer["activation_dim"]
        for key in keys:
            activation = key.split("/")[1]
            out[layer["name"]][key] += per_element * layer["activation_error"][activation]
    return out


def per_tensor_omegas(layers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Omegas:
    """Omega with per-tensor weight scales (prepared beside the per-channel one)."""
    return {layer["name"]: {k: layer["per_tensor_omega"][k] for k in keys} for layer in layers}


def measured_omegas(layers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Omegas:
    """The measured training-loss increase of each layer alone at each option
    (negative changes, noise, count as none)."""
    return {
        layer["name"]: {k: max(0.0, layer["measured_increase"][k]) for k in keys}
        for layer in layers
    }


def shuffled_omegas(
    layers: Sequence[Mapping[str, Any]], keys: Sequence[str], seed: int
) -> tuple[Omegas, dict[str, str]]:
    """Omega with the normalised traces moved to other layers (a seeded
    derangement); each option keeps its layer's own weight error, so only the
    sensitivity's say in the allocation is removed."""
    names = [layer["name"] for layer in layers]
    rng = np.random.default_rng(1000 + seed)
    while True:
        order = list(rng.permutation(len(names)))
        if all(i != j for i, j in enumerate(order)):
            break
    out: Omegas = {}
    moved = {}
    for layer, source in zip(layers, (layers[j] for j in order), strict=True):
        per_weight = source["trace"] / source["parameters"]
        out[layer["name"]] = {k: per_weight * layer["options"][k]["weight_error_sq"] for k in keys}
        moved[layer["name"]] = source["name"]
    return out, moved


def ilp(
    layers: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    omegas: Omegas,
    budget: Budget,
    limit: float,
) -> Config:
    """Minimum total Omega with the budget's axis at most ``limit``."""
    problem = Problem(
        layers=tuple(
            LayerChoice(
                name=layer["name"],
                parameters=layer["parameters"],
                options=tuple(
                    OptionCost(
                        key=key,
                        omega=omegas[layer["name"]][key],
                        size_bytes=layer["options"][key]["costs"]["size_bytes"],
                        bops=layer["options"][key]["costs"]["bops"],
                        scale_bytes=layer["options"][key]["costs"]["scale_bytes"],
                    )
                    for key in keys
                ),
            )
            for layer in layers
        ),
        name="digits_cnn",
    )
    budgets = Budgets(bops=limit) if budget.axis == "bops" else Budgets(size_bytes=limit)
    solution = solve(problem, budgets)
    if solution.status == "infeasible":
        raise BudgetTooSmall(f"no configuration fits {budget.label} ({limit:.4g})")
    return dict(solution.assignment)


def uniform_fit(
    layers: Sequence[Mapping[str, Any]],
    option_set: OptionSet,
    omegas: Omegas,
    budget: Budget,
    limit: float,
) -> str:
    """The uniform configuration that fits with the least total Omega (the
    pipeline's rule); ties go to the costlier one, whose activations are finer."""
    fitting = []
    for key in option_set.option_keys():
        config = {layer["name"]: key for layer in layers}
        cost = config_cost(layers, config, budget.axis)
        if cost <= limit * (1 + 1e-9):
            total = sum(omegas[layer["name"]][key] for layer in layers)
            bops = config_cost(layers, config, "bops")
            fitting.append((total, -bops, key))
    if not fitting:
        raise BudgetTooSmall(f"no uniform configuration fits {budget.label} ({limit:.4g})")
    return min(fitting)[2]


def random_configs(
    layers: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    budget: Budget,
    limit: float,
    seed: int,
) -> list[Config]:
    """``RANDOM_CONFIGS`` distinct configurations drawn uniformly from all of
    those costing within ``RANDOM_WINDOW`` below the limit (fewer if fewer exist)."""
    costs = np.array([[option_cost(layer, k, budget.axis) for k in keys] for layer in layers])
    combos = np.array(list(itertools.product(range(len(keys)), repeat=len(layers))))
    totals = costs[np.arange(len(layers)), combos].sum(axis=1)
    inside = np.flatnonzero(
        (totals <= limit * (1 + 1e-9)) & (totals >= limit * (1 - RANDOM_WINDOW))
    )
    rng = np.random.default_rng(2000 + seed)
    picked = rng.choice(inside, size=min(RANDOM_CONFIGS, len(inside)), replace=False)
    return [
        {layer["name"]: keys[int(j)] for layer, j in zip(layers, combos[i], strict=True)}
        for i in picked
    ]
