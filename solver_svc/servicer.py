"""gRPC edge of the solver: converts, looks problems up, maps errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import grpc

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import InvalidArgument
from bitmesh.rpc.server import Registrar
from bitmesh.settings import Settings
from bitmesh.tenants import DEFAULT_TENANT, current_tenant
from bitmesh.v1 import solver_pb2, solver_pb2_grpc
from solver_svc.convert import (
    AXIS_TO_PB,
    OBJECTIVE_FROM_PB,
    SolutionEncoder,
    axis_from_pb,
    budgets_from_pb,
    problem_from_pb,
    solution_to_pb,
)
from solver_svc.cpsat import import_ortools
from solver_svc.frontier import frontier, lookup
from solver_svc.kernels import warm_up
from solver_svc.latency import LatencyProfile, list_profiles, load_profile, with_latency
from solver_svc.limits import SolverLimits, SolveSlots
from solver_svc.registry import LoadedProblem, ProblemRegistry
from solver_svc.solution import Solution
from solver_svc.solve import ProblemSolver

SERVICE_NAME = solver_pb2.DESCRIPTOR.services_by_name["SolverService"].full_name
DEFAULT_POINTS = 20
#: Registered problems whose answer encoders are kept (the registry keeps 64 loaded).
MAX_ENCODERS = 256


class SolverServicer(solver_pb2_grpc.SolverServiceServicer):
    """Every call is bounded by ``limits`` (solver_svc/limits.py): one
    deadline from the call's start, conversion and every solve inside it
    included, and problem sizes refused on the request's counts (the dense
    instance a solve builds, on its own cells, once dominated options are out)."""

    def __init__(self, registry: ProblemRegistry, limits: SolverLimits | None = None) -> None:
        self.registry = registry
        # Each tenant's problems are its own (bitmesh/tenants.py): a registry
        # per tenant over its own artifact store, the default tenant's being
        # ``registry``. Another tenant's problem id is NOT_FOUND, as an
        # unregistered one, and its frontiers are never answered from.
        self._registries: dict[str, ProblemRegistry] = {}
        self._registries_lock = threading.Lock()
        self.limits = limits or SolverLimits()
        self.slots = SolveSlots(self.limits.max_concurrent_solves)
        # One answer encoder per registered problem (see SolutionEncoder: an
        # answer costs 6-12 us to encode instead of 0.6-1.7 ms).
        self._encoders: dict[str, SolutionEncoder] = {}
        self._encoders_lock = threading.Lock()

    def registry_of(self, tenant: str) -> ProblemRegistry:
        """``tenant``'s registry (made on its first call)."""
        if tenant == DEFAULT_TENANT:
            return self.registry
        with self._registries_lock:
            registry = self._registries.get(tenant)
            if registry is None:
                registry = self._registries[tenant] = ProblemRegistry(
                    self.registry.artifacts.for_tenant(tenant),
                    self.registry.max_loaded,
                    self.registry.background,
                    max_loaded_options=self.registry.max_loaded_options,
                    max_dense_cells=self.registry.max_dense_cells,
                )
        return registry

    def close(self) -> None:
        """Stop every registry's background traces."""
        with self._registries_lock:
            registries = [self.registry, *self._registries.values()]
        for registry in registries:
            registry.close()

    def _encoder(self, loaded: LoadedProblem) -> SolutionEncoder:
        problem = loaded.solver.problem
        encoder = self._encoders.get(loaded.problem_id)
        if encoder is None or encoder.problem is not problem:
            encoder = SolutionEncoder(problem)
            with self._encoders_lock:
                if len(self._encoders) >= MAX_ENCODERS:
                    self._encoders.clear()
                self._encoders[loaded.problem_id] = encoder
        return encoder

    def _answer_pb(
        self, solution: Solution, solver: ProblemSolver, loaded: LoadedProblem | None
    ) -> solver_pb2.Solution:
        if loaded is None:
            return solution_to_pb(solution, solver.problem)
        return self._encoder(loaded).encode(solution, loaded.problem_id)

    def _profile(self, name_or_path: str) -> LatencyProfile:
        """A profile the request names, read no further than the cap."""
        return load_profile(name_or_path, max_bytes=self.limits.max_profile_bytes)

    def _resolve(
        self, request: solver_pb2.SolveRequest | solver_pb2.FrontierRequest, profile: str
    ) -> tuple[LoadedProblem | None, ProblemSolver]:
        """The registered problem (and its cached solver) or an inline one."""
        source = request.WhichOneof("problem_source")
        if source == "problem_id":
            loaded = self.registry_of(current_tenant()).get(request.problem_id)
            if profile:
                return None, ProblemSolver(
                    with_latency(loaded.solver.problem, self._profile(profile)),
                    max_dense_cells=self.limits.max_dense_cells,
                )
            return loaded, loaded.solver
        if source == "problem":
            problem = problem_from_pb(request.problem, self.limits)
            if profile:
                problem = with_latency(problem, self._profile(profile))
            return None, ProblemSolver(problem, max_dense_cells=self.limits.max_dense_cells)
        raise InvalidArgument("no problem: send problem_id (from RegisterProblem) or a problem")

    def RegisterProblem(
        self, request: solver_pb2.RegisterProblemRequest, context: grpc.ServicerContext
    ) -> solver_pb2.RegisterProblemResponse:
        registry = self.registry_of(current_tenant())
        loaded = registry.register(problem_from_pb(request.problem, self.limits))
        problem = loaded.solver.problem
        return solver_pb2.RegisterProblemResponse(
            problem_id=loaded.problem_id,
            layers=len(problem.layers),
            options=sum(len(layer.options) for layer in problem.layers),
            options_after_presolve=loaded.solver.prepared.num_options,
        )

    def Solve(
        self, request: solver_pb2.SolveRequest, context: grpc.ServicerContext
    ) -> solver_pb2.Solution:
        deadline = self.limits.deadline(request.time_limit_s)
        objective = OBJECTIVE_FROM_PB.get(request.objective)
        if objective is None:
            raise InvalidArgument(f"unknown objective {request.objective}")
        max_omega = request.max_omega if request.HasField("max_omega") else None
        if objective != "omega" and max_omega is None and not request.budgets.ListFields():
            raise InvalidArgument(
                f"minimising {objective} without an Omega bound or budgets picks the lowest "
                "precision everywhere; set max_omega"
            )
        budgets = budgets_from_pb(request.budgets, max_omega)
        loaded, solver = self._resolve(request, request.budgets.latency_profile)
        with self.slots.held(deadline):
            solution = solver.solve(
                budgets,
                objective=objective,
                time_limit_s=self.limits.max_time_limit_s,
                deadline=deadline,
            )
        return self._answer_pb(solution, solver, loaded)

    def Frontier(
        self, request: solver_pb2.FrontierRequest, context: grpc.ServicerContext
    ) -> solver_pb2.FrontierResponse:
        deadline = self.limits.deadline(request.time_limit_s)
        axis = axis_from_pb(request.axis)
        wanted = self.limits.frontier_points(request.points, DEFAULT_POINTS)
        loaded, solver = self._resolve(request, request.constraints.latency_profile)
        with self.slots.held(deadline):
            traced = frontier(
                solver,
                axis,
                budgets_from_pb(request.constraints),
                points=wanted,
                low=request.min_limit if request.HasField("min_limit") else None,
                high=request.max_limit if request.HasField("max_limit") else None,
                time_limit_s=self.limits.max_time_limit_s,
                deadline=deadline,
            )
        if loaded is not None:
            registry = self.registry_of(current_tenant())
            registry.add_frontier(loaded, traced)
            if not traced.complete:
                # Later what-if queries on this axis will come from memory.
                registry.trace_exhaustive(loaded, axis, traced.constraints)
        if loaded is None and len(traced.points) > 1:
            encode = SolutionEncoder(solver.problem).encode
            points = [encode(p) for p in traced.points]
        else:
            points = [self._answer_pb(p, solver, loaded) for p in traced.points]
        return solver_pb2.FrontierResponse(
            points=points,
            seconds=traced.seconds,
            axis=AXIS_TO_PB[axis],
            timed_out=traced.timed_out,
        )

    def WhatIf(
        self, request: solver_pb2.WhatIfRequest, context: grpc.ServicerContext
    ) -> solver_pb2.Solution:
        start = time.perf_counter()
        deadline = self.limits.deadline(request.time_limit_s)
        registry = self.registry_of(current_tenant())
        loaded = registry.get(request.problem_id)
        if request.budgets.latency_profile:
            raise InvalidArgument(
                "what-if answers from the registered problem's own latency costs; register the "
                "problem with latencies from the profile, or call Solve with latency_profile"
            )
        budgets = budgets_from_pb(request.budgets)
        registry.note_what_if(loaded, budgets)
        # Memory first, without the problem's lock: stored frontiers are
        # immutable and replaced whole.
        answer, nearest = lookup(budgets, loaded.all_frontiers())
        if answer is not None:
            # ``lookup`` answers only where the stored points prove optimality
            # (points the time limit cut short prove nothing), so OPTIMAL with
            # gap 0 is what this answer is, whatever the stored point's status.
            message = self._encoder(loaded).encode_kept(answer, loaded.problem_id)
            message.answered_from = "frontier"
            message.status = solver_pb2.SOLVE_STATUS_OPTIMAL
            message.gap = 0.0
            message.seconds = time.perf_counter() - start
            return message
        # No per-problem lock: a ProblemSolver is safe to share (its only
        # state is a cache of instances, each built whole before it is
        # stored), and the compiled search releases the GIL, so solves of one
        # problem run side by side with each other and its background traces.
        with self.slots.held(deadline):
            solution = loaded.solver.solve(
                budgets,
                time_limit_s=self.limits.max_time_limit_s,
                warm_start=nearest,
                deadline=deadline,
            )
        message = self._encoder(loaded).encode(solution, loaded.problem_id)
        message.seconds = time.perf_counter() - start
        return message

    def ListLatencyProfiles(
        self, request: solver_pb2.ListLatencyProfilesRequest, context: grpc.ServicerContext
    ) -> solver_pb2.ListLatencyProfilesResponse:
        return solver_pb2.ListLatencyProfilesResponse(
            profiles=[
                solver_pb2.LatencyProfileInfo(name=p.name, kind=p.kind, source=p.source)
                for p in list_profiles()
            ]
        )


def build(
    settings: Settings,
) -> tuple[Sequence[Registrar], Sequence[str], list[Callable[[float], None]]]:
    # Compile (or load) the search kernels and import OR-Tools before the
    # port opens: the first compile and the imports take several seconds,
    # which no request (and no request's time limit) should pay.
    warm_up()
    import_ortools()
    registry = ProblemRegistry(
        ArtifactStore(settings.artifact_root),
        max_loaded_options=settings.solver_max_loaded_options,
        max_dense_cells=settings.solver_max_dense_cells,
    )
    servicer = SolverServicer(registry, SolverLimits.from_settings(settings))
    return (
        [lambda s: solver_pb2_grpc.add_SolverServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        [lambda grace: servicer.close()],
    )
