"""Registered problems: stored in the artifact store, solved from memory.

A problem's id is its content hash, so registering the same tables twice
gives the same id and any replica (or a restarted service) can load it from
the artifact store. Each loaded problem keeps one ``ProblemSolver`` (its
presolve and instances are reused across queries) and the frontiers traced
for it, which what-if queries answer from where that is provably optimal.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import InvalidArgument, NotFound
from solver_svc.frontier import Frontier
from solver_svc.problem import Problem
from solver_svc.solve import ProblemSolver

NAMESPACE = "solver-problems"
FRONTIERS = "solver-frontiers"
MAX_LOADED = 64
MAX_FRONTIERS_PER_PROBLEM = 16


@dataclass
class LoadedProblem:
    problem_id: str
    solver: ProblemSolver
    frontiers: list[Frontier] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ProblemRegistry:
    """Problems by id: memory first, then the artifact store."""

    def __init__(self, artifacts: ArtifactStore, max_loaded: int = MAX_LOADED) -> None:
        self.artifacts = artifacts
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedProblem] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def id_of(problem: Problem) -> str:
        return f"p-{problem.content_hash()[:32]}"

    def register(self, problem: Problem) -> LoadedProblem:
        problem_id = self.id_of(problem)
        if self.artifacts.get_ref(NAMESPACE, problem_id) is None:
            self.artifacts.set_ref(NAMESPACE, problem_id, problem.to_json())
        return self._remember(problem_id, problem)

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
        loaded = self._remember(problem_id, Problem.from_json(data))
        stored = self.artifacts.get_ref(FRONTIERS, problem_id) or {}
        loaded.frontiers = [Frontier.from_json(f) for f in stored.get("frontiers", [])]
        return loaded

    def add_frontier(self, loaded: LoadedProblem, traced: Frontier) -> None:
        """Keep a traced frontier for later what-if queries (newest first)."""
        with self._lock:
            loaded.frontiers.insert(0, traced)
            del loaded.frontiers[MAX_FRONTIERS_PER_PROBLEM:]
            payload = {"frontiers": [f.to_json() for f in loaded.frontiers]}
        self.artifacts.set_ref(FRONTIERS, loaded.problem_id, payload)

    def _remember(self, problem_id: str, problem: Problem) -> LoadedProblem:
        with self._lock:
            existing = self._loaded.get(problem_id)
            if existing is not None:
                return existing
            loaded = LoadedProblem(problem_id, ProblemSolver(problem))
            self._loaded[problem_id] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return loaded
