"""The solver's ceilings: how long one call may take and how large a problem may be.

Why one module: every request is bounded by the same numbers, and each number
is a setting (``BITMESH_SOLVER_*``) whose name the refusal carries, so an
operator who sees RESOURCE_EXHAUSTED knows which knob to turn and a user knows
what to shrink. The sizes are checked on the counts of the request itself,
before any option object or array is built: layers, options per layer and
options in all, which bound what a problem costs stored (sparse, linear in
its options, ``presolve.PreparedProblem``). The engines work on dense
``[groups, widest option list]`` arrays, so ``max_dense_cells`` caps those,
where they are built (``presolve.build_instance``), after dominated options
are removed: 20,000 layers of 4 options and one of 256 are refused only if
that one layer keeps so many options that the padding passes the cap.

Time: a call's time limit (the request's, else the service default, never more
than the maximum) is one deadline for the whole call, every solve inside it
included (a frontier's ends and points, an infeasibility explanation), see
``solve.ProblemSolver.solve(deadline=...)``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bitmesh.errors import InvalidArgument, ResourceExhausted
from bitmesh.settings import Settings

__all__ = ["SolveSlots", "SolverLimits"]


@dataclass(frozen=True)
class SolverLimits:
    """The ceilings, one field per ``Settings.solver_*`` setting."""

    default_time_limit_s: float = 30.0
    max_time_limit_s: float = 600.0
    max_layers: int = 20_000
    max_options_per_layer: int = 256
    max_total_options: int = 500_000
    max_dense_cells: int = 1_000_000
    max_frontier_points: int = 1_000
    max_profile_bytes: int = 16 * 1024 * 1024
    max_concurrent_solves: int = 8

    def __post_init__(self) -> None:
        for name in ("default_time_limit_s", "max_time_limit_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BITMESH_SOLVER_{name.upper()} must be > 0, got {value!r}")
        for name in (
            "max_layers",
            "max_options_per_layer",
            "max_total_options",
            "max_dense_cells",
            "max_frontier_points",
            "max_profile_bytes",
            "max_concurrent_solves",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"BITMESH_SOLVER_{name.upper()} must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> SolverLimits:
        return cls(
            default_time_limit_s=settings.solver_default_time_limit_s,
            max_time_limit_s=settings.solver_max_time_limit_s,
            max_layers=settings.solver_max_layers,
            max_options_per_layer=settings.solver_max_options_per_layer,
            max_total_options=settings.solver_max_total_options,
            max_dense_cells=settings.solver_max_dense_cells,
            max_frontier_points=settings.solver_max_frontier_points,
            max_profile_bytes=settings.solver_max_profile_bytes,
            max_concurrent_solves=settings.solver_max_concurrent_solves,
        )

    # -- time ----------------------------------------------------------------

    def time_limit(self, requested: float) -> float:
        """The seconds one call may take: ``requested`` (0 = the default),
        never more than the maximum."""
        if not math.isfinite(requested) or requested < 0:
            raise InvalidArgument(
                f"time_limit_s must be a finite number >= 0 (0 = the service default of "
                f"{self.default_time_limit_s:g} s), got {requested!r}"
            )
        return min(requested or self.default_time_limit_s, self.max_time_limit_s)

    def deadline(self, requested: float) -> float:
        """``time.perf_counter()`` seconds by which the whole call must end."""
        return time.perf_counter() + self.time_limit(requested)

    # -- size ----------------------------------------------------------------

    def check_problem_shape(self, layers: int, widest: int, total_options: int) -> None:
        """Refuse a problem over a cap (RESOURCE_EXHAUSTED naming the setting).

        The dense cells are not among them: their cap applies to each pruned
        instance (``ProblemSolver(max_dense_cells=...)``)."""
        _cap("layers", layers, self.max_layers, "BITMESH_SOLVER_MAX_LAYERS")
        _cap(
            "options in one layer",
            widest,
            self.max_options_per_layer,
            "BITMESH_SOLVER_MAX_OPTIONS_PER_LAYER",
        )
        _cap(
            "options in all",
            total_options,
            self.max_total_options,
            "BITMESH_SOLVER_MAX_TOTAL_OPTIONS",
        )

    def frontier_points(self, requested: int, default: int) -> int:
        """The points a frontier traces: ``requested`` (0 = ``default``)."""
        if requested < 0:
            raise InvalidArgument(f"points must be >= 0 (0 = {default}), got {requested}")
        points = requested or min(default, self.max_frontier_points)
        _cap(
            "frontier points",
            points,
            self.max_frontier_points,
            "BITMESH_SOLVER_MAX_FRONTIER_POINTS",
        )
        return points


class SolveSlots:
    """At most ``limit`` solves at once in this process; a call waits for a
    slot until its own deadline, then ends RESOURCE_EXHAUSTED.

    Why: the engines' compiled search releases the GIL, but a solve's set-up,
    CP-SAT's model building and the answer's encoding hold it. 64 solves at
    once (as many as the server takes calls) left the process's health port
    past a 1 s deadline; a handful at once keeps the cores busy as well.
    Waiting costs no CPU: the waiting call's thread sleeps on the semaphore.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextmanager
    def held(self, deadline: float) -> Iterator[None]:
        """Hold a slot for the block (``deadline`` in ``time.perf_counter()`` s)."""
        if not self._free.acquire(timeout=max(0.0, deadline - time.perf_counter())):
            raise ResourceExhausted(
                f"{self.limit} solves are running, the most this service runs at once "
                "(BITMESH_SOLVER_MAX_CONCURRENT_SOLVES), and none ended within this call's "
                "time limit; retry, allow more time, or ask the operator to raise the cap"
            )
        try:
            yield
        finally:
            self._free.release()


def _cap(what: str, value: int, cap: int, setting: str) -> None:
    if value > cap:
        raise ResourceExhausted(
            f"the request has {value:,} {what}; the cap is {cap:,} ({setting}); "
            "send a smaller problem or ask the operator to raise the cap"
        )
