"""Solver problems that take the exact engine longer than a test's time limit.

Why here: the concurrency test (slow solves holding a server's threads) and
the solver ceiling test (a Frontier cut by its limit) both need a problem an
unbounded solve would spend many seconds on, built the same way. Costs and
Omega are drawn independently per option (uniform), so few options dominate
others and three budgets at about a third of their range leave a core the
search cannot close quickly: with 300 layers of 32 options, a Solve at
``ratio=30`` was still FEASIBLE (not proven) at a 6 s limit, and a Frontier
of 150 layers of 24 options took 21 s for 50 points with no limit.
"""

from __future__ import annotations

import numpy as np

from bitmesh.v1 import common_pb2, solver_pb2


def hard_problem(layers: int, options: int, seed: int = 0) -> solver_pb2.Problem:
    """``layers`` layers of ``options`` options, costs and Omega uniform in [1, 100)."""
    rng = np.random.default_rng(seed)
    msg = solver_pb2.Problem(name=f"hard-{layers}x{options}")
    for i in range(layers):
        costs = rng.uniform(1, 100, size=(options, 3))
        omega = rng.uniform(1, 100, size=options)
        layer = msg.layers.add(name=f"l{i}", parameters=1000)
        for k in range(options):
            layer.options.add(
                key=f"o{k}",
                omega=float(omega[k]),
                costs=common_pb2.LayerCosts(
                    size_bytes=float(costs[k, 0]),
                    bops=float(costs[k, 1]),
                    latency_ms=float(costs[k, 2]),
                ),
            )
    return msg


def hard_budgets(layers: int, ratio: float, axes: tuple[str, ...]) -> common_pb2.Budgets:
    """``ratio`` per layer on each axis named (``size_bytes``, ``bops``,
    ``latency_ms``): options cost 1 to 100, so 30 is about a third of the range."""
    return common_pb2.Budgets(**{f"max_{axis}": ratio * layers for axis in axes})
