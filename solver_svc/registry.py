"""Registered problems: stored in the artifact store, solved from memory.

A problem's id is its content hash, so registering the same tables twice
gives the same id and any replica (or a restarted service) can load it from
the artifact store. Each loaded problem keeps one ``ProblemSolver`` (its
presolve and instances are reused across queries) and the frontiers traced
for it, which what-if queries answer from where that is provably optimal.

Memory: at most ``MAX_LOADED`` problems and ``max_loaded_options`` stored
options (``BITMESH_SOLVER_MAX_LOADED_OPTIONS``) stay loaded, least recently
used out first; the rest live in the artifact store only. A loaded problem
is stored sparse (``presolve.PreparedProblem``), so its memory is linear in
the options sent; the dense instances its solves build are pruned first and
capped per instance (``BITMESH_SOLVER_MAX_DENSE_CELLS``).

Exhaustive frontiers in the background. A what-if client usually moves one
limit and keeps the others (a slider). When two what-if queries of a problem
share every budget but one axis's limit, or a sampled frontier is traced,
that axis is traced exhaustively (every Pareto point, ``frontier(...,
exhaustive=True)``) on one background thread; each partial result is
published as it grows (exact from the loose end down to its last point), so
later queries on that axis are answered from memory, provably optimal, with
no solve. Everything else is a warm-started exact solve.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import InvalidArgument, NotFound
from solver_svc.frontier import FRONTIER_AXES, Frontier, frontier
from solver_svc.limits import SolverLimits
from solver_svc.problem import Problem
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets

NAMESPACE = "solver-problems"
FRONTIERS = "solver-frontiers"
MAX_LOADED = 64
#: Options (as stored: ties merged, pins applied) of all loaded problems
#: together. Measured on 20,000 layers of 4 options: ~200 bytes an option for
#: the ``Problem`` objects, ~140 for the sparse arrays and key maps, and the
#: pruned dense instances its solves keep on top (each capped by
#: ``BITMESH_SOLVER_MAX_DENSE_CELLS``); 1 M options is ~350 MiB and up of the
#: solver pod's 2 GiB. The newest problem always stays, so one at the request
#: cap (``BITMESH_SOLVER_MAX_TOTAL_OPTIONS``) is kept too.
MAX_LOADED_OPTIONS = 1_000_000
MAX_FRONTIERS_PER_PROBLEM = 16
#: Exhaustive traces one problem may start (each is one axis under fixed other budgets).
MAX_TRACES_PER_PROBLEM = 8
#: Time one exhaustive trace may take before it stops (its partial result stays).
TRACE_TIME_LIMIT_S = 300.0
#: What-if query patterns remembered per problem (to spot a one-limit sweep).
SEEN_PATTERNS = 64

log = logging.getLogger(__name__)

TraceKey = tuple[str, Budgets]
#: The limits of a what-if on each frontier axis, in ``FRONTIER_AXES`` order.
_frontier_limits = attrgetter(*FRONTIER_AXES)


@dataclass
class LoadedProblem:
    problem_id: str
    solver: ProblemSolver
    frontiers: list[Frontier] = field(default_factory=list)
    #: Exhaustive frontiers by (axis, other budgets), partial while tracing.
    traced: dict[TraceKey, Frontier] = field(default_factory=dict)
    #: State of each trace: "running", "done", "stopped" or "failed".
    tracing: dict[TraceKey, str] = field(default_factory=dict)
    #: The last limit queried per pattern (to spot a one-limit sweep): keyed by
    #: the axis and the frontier axes' limits with that axis's own left out.
    seen: OrderedDict[tuple[str, tuple[float | None, ...]], float] = field(
        default_factory=OrderedDict
    )

    def all_frontiers(self) -> list[Frontier]:
        """Exhaustive traces first (they answer every limit they cover); a
        finished trace is also among the stored frontiers and is listed once."""
        traced = list(self.traced.values())
        return [*traced, *(f for f in self.frontiers if not any(f is t for t in traced))]


class ProblemRegistry:
    """Problems by id: memory first, then the artifact store."""

    def __init__(
        self,
        artifacts: ArtifactStore,
        max_loaded: int = MAX_LOADED,
        background: bool = True,
        max_loaded_options: int = MAX_LOADED_OPTIONS,
        max_dense_cells: int | None = SolverLimits.max_dense_cells,
    ) -> None:
        self.artifacts = artifacts
        self.max_loaded = max_loaded
        self.max_loaded_options = max_loaded_options
        #: The dense-cells cap of the instances the loaded problems' solves build.
        self.max_dense_cells = max_dense_cells
        self.background = background
        self._loaded: OrderedDict[str, LoadedProblem] = OrderedDict()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()

    @staticmethod
    def id_of(problem: Problem) -> str:
        return f"p-{problem.content_hash()[:32]}"

    def register(self, problem: Problem) -> LoadedProblem:
        """Store ``problem`` (once) and load it; a problem stored before (by
        this or another replica, or before a restart) comes back with the
        frontiers stored for it, so its what-if queries are answered from
        memory at once instead of after a new trace."""
        problem_id = self.id_of(problem)
        with self._lock:
            loaded = self._loaded.get(problem_id)
        if loaded is not None:
            return loaded
        if self.artifacts.get_ref(NAMESPACE, problem_id) is None:
            self.artifacts.set_ref(NAMESPACE, problem_id, problem.to_json())
            return self._remember(problem_id, problem)
        return self._load_frontiers(self._remember(problem_id, problem))

    def get(self, problem_id: str) -> LoadedProblem:
        if not problem_id:
            raise InvalidArgument(
                "problem_id is empty: register a problem first or send one inline"
            )
        with self._lock:
            loaded = self._loaded.get(problem_id)
            if loaded is not None:
                self._loaded.move_to_end(problem_id)
                return loaded
        try:
            data = self.artifacts.get_ref(NAMESPACE, problem_id)
        except InvalidArgument:
            data = None
        if data is None:
            raise NotFound(f"problem {problem_id!r} is not registered; call RegisterProblem first")
        return self._load_frontiers(self._remember(problem_id, Problem.from_json(data)))

    def _load_frontiers(self, loaded: LoadedProblem) -> LoadedProblem:
        """Add the frontiers stored for ``loaded`` (complete ones answer what-if)."""
        stored = self.artifacts.get_ref(FRONTIERS, loaded.problem_id) or {}
        frontiers = [Frontier.from_json(f) for f in stored.get("frontiers", [])]
        with self._lock:
            if loaded.frontiers:  # loaded already (a racing call) or traced since
                return loaded
            loaded.frontiers = frontiers
            for fr in frontiers:
                if fr.complete:
                    loaded.traced.setdefault((fr.axis, fr.constraints), fr)
                    loaded.tracing[(fr.axis, fr.constraints)] = "done"
        return loaded

    def add_frontier(self, loaded: LoadedProblem, traced: Frontier) -> None:
        """Keep a traced frontier for later what-if queries (newest first)."""
        with self._lock:
            loaded.frontiers.insert(0, traced)
            del loaded.frontiers[MAX_FRONTIERS_PER_PROBLEM:]
            payload = {"frontiers": [f.to_json() for f in loaded.frontiers]}
        self.artifacts.set_ref(FRONTIERS, loaded.problem_id, payload)

    # -- exhaustive traces ---------------------------------------------------

    def note_what_if(self, loaded: LoadedProblem, budgets: Budgets) -> None:
        """Remember a what-if's pattern; a query that differs from an earlier
        one only in one axis's limit starts that axis's trace.

        Called on every what-if, so patterns are plain tuples of the limits
        (the axis's own set to None) rather than ``Budgets`` built with
        ``with_limit``: 27 us per query before, ~6 us now (3 budgets set).
        """
        if budgets.omega is not None:
            return  # every pattern would hold an Omega bound: never traced
        limits = _frontier_limits(budgets)
        start: list[str] = []
        with self._lock:
            seen = loaded.seen
            for i, axis in enumerate(FRONTIER_AXES):
                limit = limits[i]
                if limit is None:
                    continue
                pattern = (axis, (*limits[:i], None, *limits[i + 1 :]))
                before = seen.pop(pattern, None)
                seen[pattern] = limit
                if before is not None and before != limit:
                    start.append(axis)
            while len(seen) > SEEN_PATTERNS:
                seen.popitem(last=False)
        for axis in start:
            self.trace_exhaustive(loaded, axis, budgets.with_limit(axis, None))

    def trace_exhaustive(self, loaded: LoadedProblem, axis: str, constraints: Budgets) -> bool:
        """Start tracing every Pareto point of ``axis`` under ``constraints`` in
        the background (once per key); False when it was not started."""
        key = (axis, constraints)
        with self._lock:
            if key in loaded.tracing or len(loaded.tracing) >= MAX_TRACES_PER_PROBLEM:
                return False
            loaded.tracing[key] = "running"
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="solver-frontier-trace"
                )
            executor = self._executor
        if self.background:
            executor.submit(self._trace, loaded, key)
        else:
            self._trace(loaded, key)
        return True

    def _trace(self, loaded: LoadedProblem, key: TraceKey) -> None:
        axis, constraints = key

        def publish(partial: Frontier) -> None:
            loaded.traced[key] = partial

        try:
            traced = frontier(
                loaded.solver,
                axis,
                constraints,
                exhaustive=True,
                time_limit_s=TRACE_TIME_LIMIT_S,
                progress=publish,
                progress_every=4,
                should_stop=self._stopping.is_set,
            )
        except Exception as exc:  # a failed trace only means no shortcut
            log.warning("exhaustive %s frontier of %s failed: %s", axis, loaded.problem_id, exc)
            loaded.tracing[key] = "failed"
            return
        publish(traced)
        loaded.tracing[key] = "done" if traced.complete else "stopped"
        if traced.complete:
            self.add_frontier(loaded, traced)
        log.info(
            "exhaustive %s frontier of %s: %d points in %.2f s",
            axis,
            loaded.problem_id,
            len(traced.points),
            traced.seconds,
        )

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until queued traces have finished (tests and benchmarks)."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return True
        return executor.submit(lambda: None).exception(timeout=timeout_s) is None

    def close(self) -> None:
        """Stop tracing (a running trace ends at its next step)."""
        self._stopping.set()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _remember(self, problem_id: str, problem: Problem) -> LoadedProblem:
        with self._lock:
            existing = self._loaded.get(problem_id)
            if existing is not None:
                return existing
            solver = ProblemSolver(problem, max_dense_cells=self.max_dense_cells)
            loaded = LoadedProblem(problem_id, solver)
            self._loaded[problem_id] = loaded
            # Least recently used first, by count and by stored options; the
            # newest always stays. An evicted problem is loaded again from
            # the artifact store on its next query.
            while len(self._loaded) > 1 and (
                len(self._loaded) > self.max_loaded
                or self.loaded_options() > self.max_loaded_options
            ):
                self._loaded.popitem(last=False)
            return loaded

    def loaded_options(self) -> int:
        """Stored options of the problems in memory (call with the lock held)."""
        return sum(p.solver.prepared.num_options for p in self._loaded.values())
