"""All methods at one budget for one seed, in both regimes, as report rows.

A row is one (budget, method, regime, seed): accuracy, loss, costs, whether
the budget is met and the configuration. Random allocations are averaged
over their configurations within the seed (each one is kept in ``runs``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fidelity import allocate, runs
from fidelity.protocol import Budget, OptionSet, Training

Row = dict[str, Any]


def _row(budget: Budget, limit: float, method: str, regime: str, seed: int, run: Row) -> Row:
    cost = run["bops"] if budget.axis == "bops" else run["size"]
    return {
        "budget": budget.name,
        "limit": limit,
        "method": method,
        "regime": regime,
        "seed": seed,
        "cost": cost,
        "meets_budget": cost <= limit * (1 + 1e-9),
        **run,
    }


def _mean_row(rows: Sequence[Row]) -> Row:
    """One row for a method drawn several times in a seed: means of the numbers."""
    first = dict(rows[0])
    for key in ("accuracy", "loss", "bops", "size", "cost", "seconds"):
        first[key] = statistics.fmean(r[key] for r in rows)
    first["meets_budget"] = all(r["meets_budget"] for r in rows)
    first["config"] = None
    first["runs"] = [{k: r[k] for k in ("accuracy", "loss", "cost", "config")} for r in rows]
    return first


def _both_regimes(
    emit: Callable[[str, str, Row], None],
    method: str,
    config: allocate.Config,
    weights: str,
    training: Training,
    seed: int,
) -> None:
    emit(method, "ptq", runs.ptq(weights, config, training, seed))
    emit(method, "qat", runs.qat(weights, config, training, seed))


def run_budget(
    prepared: Mapping[str, Any],
    budget: Budget,
    limit: float,
    option_set: OptionSet,
    training: Training,
) -> list[Row]:
    """Every method of the protocol at one budget (see ``protocol.METHODS``)."""
    layers = prepared["layers"]
    weights = prepared["weights"]
    seed = prepared["seed"]
    keys = option_set.option_keys()
    omegas = allocate.weight_omegas(layers, keys)
    rows: list[Row] = []

    def emit(method: str, regime: str, run: Row) -> None:
        rows.append(_row(budget, limit, method, regime, seed, run))

    _both_regimes(
        emit, "lcpaq", allocate.ilp(layers, keys, omegas, budget, limit), weights, training, seed
    )
    searched = runs.fliqs(weights, option_set, budget, limit, training, seed)
    emit("fliqs", "qat", searched)
    emit("fliqs", "ptq", runs.ptq(weights, searched["config"], training, seed))
    fit = allocate.uniform_fit(layers, option_set, omegas, budget, limit)
    _both_regimes(
        emit, "uniform", {layer["name"]: fit for layer in layers}, weights, training, seed
    )
    above = option_set.step_up(fit)
    if above is not None:
        _both_regimes(
            emit,
            "uniform_above",
            {layer["name"]: above for layer in layers},
            weights,
            training,
            seed,
        )
    shuffled, _ = allocate.shuffled_omegas(layers, keys, seed)
    _both_regimes(
        emit,
        "shuffled",
        allocate.ilp(layers, keys, shuffled, budget, limit),
        weights,
        training,
        seed,
    )
    drawn: dict[str, list[Row]] = {"ptq": [], "qat": []}
    for config in allocate.random_configs(layers, keys, budget, limit, seed):
        drawn["ptq"].append(
            _row(budget, limit, "random", "ptq", seed, runs.ptq(weights, config, training, seed))
        )
        drawn["qat"].append(
            _row(budget, limit, "random", "qat", seed, runs.qat(weights, config, training, seed))
        )
    rows.extend(_mean_row(drawn[r]) for r in ("ptq", "qat") if drawn[r])
    return rows


def run_variants(
    prepared: Mapping[str, Any],
    budget: Budget,
    limit: float,
    option_set: OptionSet,
    training: Training,
) -> list[Row]:
    """LCPAQ changed one way at a time at the tightest budget (``protocol.VARIANTS``):
    activation-aware Omega, per-tensor weight scales (with the uniform fit at
    per-tensor scales beside it), and three times the QAT steps."""
    layers = prepared["layers"]
    weights = prepared["weights"]
    seed = prepared["seed"]
    keys = option_set.option_keys()
    rows: list[Row] = []

    def emit(method: str, regime: str, run: Row) -> None:
        rows.append(_row(budget, limit, method, regime, seed, run))

    measured = allocate.ilp(layers, keys, allocate.measured_omegas(layers, keys), budget, limit)
    _both_regimes(emit, "lcpaq_measured", measured, weights, training, seed)
    act = allocate.ilp(layers, keys, allocate.activation_aware_omegas(layers, keys), budget, limit)
    _both_regimes(emit, "lcpaq_act", act, weights, training, seed)
    per_tensor = allocate.per_tensor_omegas(layers, keys)
    pt = allocate.ilp(layers, keys, per_tensor, budget, limit)
    fit_pt = allocate.uniform_fit(layers, option_set, per_tensor, budget, limit)
    _both_regimes(emit, "lcpaq_pt", {n: f"{k}:pt" for n, k in pt.items()}, weights, training, seed)
    _both_regimes(
        emit,
        "uniform_pt",
        {layer["name"]: f"{fit_pt}:pt" for layer in layers},
        weights,
        training,
        seed,
    )
    omegas = allocate.weight_omegas(layers, keys)
    lcpaq = allocate.ilp(layers, keys, omegas, budget, limit)
    fit = allocate.uniform_fit(layers, option_set, omegas, budget, limit)
    long = training.long_qat_steps
    emit("lcpaq_long", "qat", runs.qat(weights, lcpaq, training, seed, steps=long))
    emit(
        "uniform_long",
        "qat",
        runs.qat(weights, {layer["name"]: fit for layer in layers}, training, seed, steps=long),
    )
    return rows
