"""Solver benchmark: bitmesh's exact engine against PuLP+CBC (and CP-SAT), in one process.

Instances:

- HAWQ-V3's own (ResNet18 and ResNet50; size, BOPs and latency limits at
  ratios 0.25/0.5/0.75): one budget, two options per layer.
- "ResNet50-sized": ResNet50's real 54 weight layers (parameter and MAC counts
  from the HAWQ-V3 reference plus the first conv and the FC) x 6 options
  (weight/activation bit pairs) x 3 budgets (size, BOPs, latency). Omega =
  trace * P * quantization noise with random log-normal traces; latency is the
  T4 roofline of ``solver_svc/profiles/nvidia-t4.json`` with a random
  per-layer efficiency. Budgets at random ratios in [0.2, 0.6] of the way from
  the least to the largest total of each axis.
- "transformer-sized": 500 linear layers (83 blocks of q, k, v, o, fc1, fc2 at
  width 768, 197 tokens) x 12 options x 3 budgets, drawn the same way.

Reported: per family the median solve time of each engine and the ratio
PuLP+CBC / bitmesh, with a check that bitmesh's optimum is at least as good as
CBC's on every instance; the time of a 100-point frontier (BOPs axis, size and
latency held); and the what-if latency (``bench_whatif_grpc``).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_solver.py [--quick]``.
The last line is ``RESULT speedup_vs_pulp=<x> frontier100_s=<s>
whatif_p50_ms=<ms> whatif_qps=<q> frontier100_transformer_s=<s>`` (speedup on
the ResNet50-sized family, frontier time for ResNet50-sized instances, and
for one transformer-sized instance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from solver_svc.frontier import frontier  # noqa: E402
from solver_svc.hawq import AXIS_OF_KIND, hawq_limit, load_hawq  # noqa: E402
from solver_svc.latency import RooflineProfile, load_profile  # noqa: E402
from solver_svc.problem import LayerChoice, OptionCost, Problem  # noqa: E402
from solver_svc.solve import ProblemSolver  # noqa: E402
from solver_svc.spec import Budgets  # noqa: E402

#: (weight bits, activation bits) of the options, in order.
PAIRS_6 = ((2, 4), (4, 4), (4, 8), (8, 8), (6, 6), (8, 16))
PAIRS_12 = (*PAIRS_6, (3, 8), (8, 4), (5, 8), (6, 8), (16, 16), (4, 16))


@dataclass(frozen=True)
class Case:
    family: str
    problem: Problem
    budgets: Budgets


# -- instances -----------------------------------------------------------------


def _resnet50_layers() -> tuple[np.ndarray, np.ndarray]:
    ref = load_hawq("resnet50").raw
    params = [9408.0] + [p * 1e6 for p in ref["parameters"]["values_used_in_ilp"]] + [2048000.0]
    macs = [118013952.0] + [m * 1e6 for m in ref["bops"]["values_used_in_ilp"]] + [2048000.0]
    return np.array(params), np.array(macs)


def _transformer_layers(num_layers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d, tokens = 768, 197
    block = np.array([d * d, d * d, d * d, d * d, 4 * d * d, 4 * d * d], dtype=float)
    params = np.resize(block, num_layers) * rng.lognormal(0, 0.05, num_layers)
    return params, params * tokens


def random_problem(
    params: np.ndarray,
    macs: np.ndarray,
    pairs: tuple[tuple[int, int], ...],
    rng: np.random.Generator,
    device: RooflineProfile,
    name: str,
) -> Problem:
    trace = rng.lognormal(-6, 1.5, len(params))
    efficiency = rng.lognormal(0, 0.3, len(params))
    layers = []
    for i, (p, m) in enumerate(zip(params, macs, strict=True)):
        options = []
        for wb, ab in pairs:
            noise = (2.0 ** (-2 * wb) + 0.5 * 2.0 ** (-2 * ab)) * rng.lognormal(0, 0.2)
            size = p * wb / 8
            wf, af = f"int{wb}", f"int{ab}"
            latency = device.latency_ms(m, wf, af, size) * efficiency[i] * rng.lognormal(0, 0.1)
            options.append(
                OptionCost(
                    key=f"w{wb}a{ab}",
                    omega=float(trace[i] * p * noise),
                    size_bytes=float(size),
                    bops=float(m * wb * ab),
                    latency_ms=float(latency),
                    weight_bits=float(wb),
                    weight_format=wf,
                    act_format=af,
                )
            )
        layers.append(
            LayerChoice(name=f"{name}.layer{i}", parameters=int(p), options=tuple(options))
        )
    return Problem(layers=tuple(layers), name=name)


def ratio_budgets(problem: Problem, ratios: dict[str, float]) -> Budgets:
    limits = {}
    for axis, r in ratios.items():
        lo = sum(min(getattr(o, axis) for o in layer.options) for layer in problem.layers)
        hi = sum(max(getattr(o, axis) for o in layer.options) for layer in problem.layers)
        limits[axis] = lo + r * (hi - lo)
    return Budgets(**limits)


def random_cases(family: str, count: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    t4 = load_profile("nvidia-t4")
    assert isinstance(t4, RooflineProfile)
    cases = []
    for i in range(count):
        if family == "resnet50-sized":
            params, macs = _resnet50_layers()
            problem = random_problem(params, macs, PAIRS_6, rng, t4, f"r50s{i}")
        else:
            params, macs = _transformer_layers(500, rng)
            problem = random_problem(params, macs, PAIRS_12, rng, t4, f"tfs{i}")
        ratios = {a: float(rng.uniform(0.2, 0.6)) for a in ("size_bytes", "bops", "latency_ms")}
        cases.append(Case(family, problem, ratio_budgets(problem, ratios)))
    return cases


def hawq_cases() -> list[Case]:
    cases = []
    for model in ("resnet18", "resnet50"):
        ref = load_hawq(model)
        for axis in AXIS_OF_KIND.values():
            for ratio in (0.25, 0.5, 0.75):
                limit = hawq_limit(ref, axis, ratio)
                cases.append(Case(f"hawq-{model}", ref.problem, Budgets(**{axis: limit})))
    return cases


# -- engines -----------------------------------------------------------------------


#: Seconds PuLP spent building its model / in ``prob.solve`` (CBC, incl. its
#: subprocess and file I/O), per call, for the fairness report.
PULP_PARTS: list[tuple[float, float]] = []


def pulp_solve(problem: Problem, budgets: Budgets) -> float:
    """Total Omega of PuLP+CBC's answer (the model HAWQ-V3's notebook builds,
    CBC at its default settings)."""
    import pulp

    start = time.perf_counter()
    prob = pulp.LpProblem("bitalloc", pulp.LpMinimize)
    x = {
        (i, k): pulp.LpVariable(f"x_{i}_{k}", cat="Binary")
        for i, layer in enumerate(problem.layers)
        for k in range(len(layer.options))
    }
    prob += pulp.lpSum(
        o.omega * x[i, k]
        for i, layer in enumerate(problem.layers)
        for k, o in enumerate(layer.options)
    )
    for i, layer in enumerate(problem.layers):
        prob += pulp.lpSum(x[i, k] for k in range(len(layer.options))) == 1
    names = {layer.name: i for i, layer in enumerate(problem.layers)}
    for tie in problem.ties:
        a = names[tie[0]]
        for other in tie[1:]:
            b = names[other]
            for k in range(len(problem.layers[a].options)):
                prob += x[a, k] == x[b, k]
    for axis, limit in budgets.items():
        prob += (
            pulp.lpSum(
                getattr(o, axis) * x[i, k]
                for i, layer in enumerate(problem.layers)
                for k, o in enumerate(layer.options)
            )
            <= limit
        )
    built = time.perf_counter()
    prob.solve(pulp.PULP_CBC_CMD(msg=0))
    PULP_PARTS.append((built - start, time.perf_counter() - built))
    return sum(
        o.omega
        for i, layer in enumerate(problem.layers)
        for k, o in enumerate(layer.options)
        if (x[i, k].value() or 0) > 0.5
    )


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_family(cases: list[Case], with_cpsat: bool = True) -> dict[str, float]:
    ours, cbc, cpsat = [], [], []
    worse = 0
    PULP_PARTS.clear()
    for case in cases:
        # Each engine gets the problem as a request would: ours prepares it
        # inside the timed call, as PuLP builds its model inside its own.
        t_ours, v_ours = timed(lambda c=case: ProblemSolver(c.problem).solve(c.budgets).total_omega)
        t_cbc, v_cbc = timed(lambda c=case: pulp_solve(c.problem, c.budgets))
        ours.append(t_ours)
        cbc.append(t_cbc)
        if with_cpsat:
            t_cp, _ = timed(
                lambda c=case: ProblemSolver(c.problem).solve(c.budgets, engine="cpsat").total_omega
            )
            cpsat.append(t_cp)
        if v_ours > v_cbc + 1e-9 * max(1.0, abs(v_cbc)):
            worse += 1
    out = {
        "instances": len(cases),
        "bitmesh_median_ms": 1e3 * statistics.median(ours),
        "pulp_cbc_median_ms": 1e3 * statistics.median(cbc),
        "speedup_median": statistics.median(cbc) / statistics.median(ours),
        "bitmesh_worse_than_cbc": worse,
    }
    if cpsat:
        out["cpsat_median_ms"] = 1e3 * statistics.median(cpsat)
    out["pulp_build_median_ms"] = 1e3 * statistics.median(b for b, _ in PULP_PARTS)
    out["pulp_solve_call_median_ms"] = 1e3 * statistics.median(c for _, c in PULP_PARTS)
    out["speedup_vs_pulp_solve_call_only"] = statistics.median(
        c for _, c in PULP_PARTS
    ) / statistics.median(ours)
    return out


def bench_frontier(cases: list[Case], points: int = 100, pulp_points: int = 0) -> dict[str, float]:
    times = []
    pulp_times = []
    for case in cases:
        solver = ProblemSolver(case.problem)
        constraints = case.budgets.with_limit("bops", None)
        start = time.perf_counter()
        fr = frontier(solver, "bops", constraints, points=points, time_limit_s=300)
        times.append(time.perf_counter() - start)
        if pulp_points:
            limits = np.linspace(fr.low, fr.high, pulp_points)
            start = time.perf_counter()
            for limit in limits:
                pulp_solve(case.problem, constraints.with_limit("bops", float(limit)))
            pulp_times.append((time.perf_counter() - start) * points / pulp_points)
    out = {
        "frontier_points": points,
        "frontier_median_s": statistics.median(times),
        "frontier_max_s": max(times),
    }
    if pulp_times:
        out["pulp_frontier_median_s"] = statistics.median(pulp_times)
    return out


def problem_to_pb(problem: Problem) -> Any:
    """The benchmark's problem as the RegisterProblem message."""
    from bitmesh.v1 import common_pb2, solver_pb2

    return solver_pb2.Problem(
        name=problem.name,
        layers=[
            solver_pb2.ProblemLayer(
                name=layer.name,
                parameters=layer.parameters,
                options=[
                    solver_pb2.ProblemOption(
                        key=o.key,
                        omega=o.omega,
                        weight_bits=int(o.weight_bits),
                        costs=common_pb2.LayerCosts(
                            size_bytes=o.size_bytes, bops=o.bops, latency_ms=o.latency_ms
                        ),
                    )
                    for o in layer.options
                ],
            )
            for layer in problem.layers
        ],
    )


def _budgets_pb(budgets: Budgets) -> Any:
    from bitmesh.v1 import common_pb2

    fields = {"size_bytes": "max_size_bytes", "bops": "max_bops", "latency_ms": "max_latency_ms"}
    return common_pb2.Budgets(**{fields[axis]: limit for axis, limit in budgets.items()})


def _run_clients(
    address: str, settings: Any, problem_id: str, queries: list[list[Budgets]]
) -> dict[str, Any]:
    """Each list of ``queries`` on its own thread and channel; latency per call.

    Each client connects (a health check) before the clock starts, so the
    first query does not carry the connection's set-up.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from bitmesh.client import Client

    latencies: list[list[tuple[float, str]]] = [[] for _ in queries]
    barrier = threading.Barrier(len(queries) + 1)

    def client(index: int) -> None:
        with Client(settings, addresses={"solver": address}, timeout=120) as c:
            health = health_pb2_grpc.HealthStub(c.channel("solver"))
            health.Check(health_pb2.HealthCheckRequest(), timeout=60)
            barrier.wait()
            for budgets in queries[index]:
                start = time.perf_counter()
                try:
                    source = c.what_if(problem_id, _budgets_pb(budgets)).answered_from
                except Exception as exc:  # counted, so one bad query shows
                    source = f"error:{type(exc).__name__}"
                latencies[index].append((time.perf_counter() - start, source))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    out: dict[str, Any] = {"queries": len(flat), "qps": len(flat) / wall}
    out.update(_percentiles([x for x, _ in flat]))
    for source in sorted({s for _, s in flat}):
        times = [x for x, s in flat if s == source]
        out[f"from_{source}"] = {"count": len(times), **_percentiles(times)}
    return out


def _floor(address: str, settings: Any, clients: int, calls: int = 100) -> dict[str, float]:
    """Latency of a do-nothing call on the same server (a health check: it
    goes through every interceptor and the same thread pool, and does no
    work) under the same concurrency: what our gRPC stack and this machine's
    load cost with no work. (Until 2026-11 this was ListLatencyProfiles, which
    reads and parses every profile file per call, so it was no floor.)"""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from bitmesh.client import Client

    times: list[float] = []
    barrier = threading.Barrier(clients)

    def client() -> None:
        with Client(settings, addresses={"solver": address}, timeout=60) as c:
            stub = health_pb2_grpc.HealthStub(c.channel("solver"))
            request = health_pb2.HealthCheckRequest()
            stub.Check(request, timeout=60)  # connect before timing
            barrier.wait()
            for _ in range(calls):
                start = time.perf_counter()
                stub.Check(request, timeout=60)
                times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _percentiles(times)


#: A bare grpcio server (sync, 16 threads, no interceptors, one method that
#: returns a fixed 1 KB reply), run in a child process by ``_raw_grpc_floor``.
_RAW_SERVER = """
import sys
from concurrent import futures
import grpc
reply = b"x" * 1024
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
handler = grpc.unary_unary_rpc_method_handler(lambda request, context: reply)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Raw", {"Echo": handler}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
server.stop(0)
"""


def _raw_grpc_floor(clients: int, calls: int = 100) -> dict[str, float]:
    """The same clients against a bare grpcio server in its own process: what
    gRPC itself costs on this machine now (the figure of METHODS.md section 9,
    re-measured beside ours because the machine's load moves it)."""
    import subprocess

    import grpc

    proc = subprocess.Popen(
        [sys.executable, "-c", _RAW_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = f"127.0.0.1:{int(proc.stdout.readline())}"
        times: list[float] = []
        barrier = threading.Barrier(clients)

        def client() -> None:
            with grpc.insecure_channel(address) as channel:
                echo = channel.unary_unary("/raw.Raw/Echo")
                echo(b"x" * 1024, timeout=60)
                barrier.wait()
                for _ in range(calls):
                    start = time.perf_counter()
                    echo(b"x" * 1024, timeout=60)
                    times.append(time.perf_counter() - start)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    return {**_percentiles(times), "qps": len(times) / wall}


def _start_solver_process(root: str) -> tuple[Any, str]:
    """``python -m solver_svc`` in a child process, as it is deployed, on a
    free port; returns the process and its address.

    Why a child process: in one process the 8 client threads and the server's
    threads share one GIL, and every call's Python work on both sides is
    serialized: measured 950-1,100 what-if calls/s in process against
    1,500-2,600 with the server in its own process (same run, same code).
    """
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO), "BITMESH_LOG_LEVEL": "WARNING"}
    log_path = Path(root) / "solver-service.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "solver_svc", "--port", "0", "--artifact-root", root],
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "solver serving on 127.0.0.1:<port>"
    if "serving on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the solver service did not start: {log_path.read_text()[-2000:]}")
    return proc, f"127.0.0.1:{int(line.rsplit(':', 1)[1])}"


def _stop_solver_process(proc: Any) -> None:
    """SIGTERM (graceful stop), then kill if it has not ended in 10 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _percentiles(times: list[float]) -> dict[str, float]:
    if not times:
        return {}
    flat = sorted(times)
    return {
        "p50_ms": 1e3 * flat[len(flat) // 2],
        "p99_ms": 1e3 * flat[min(len(flat) - 1, int(0.99 * len(flat)))],
    }


def bench_whatif_grpc(
    case: Case,
    clients: int = 8,
    queries_per_client: int = 200,
    seed: int = 0,
    server: str = "process",
) -> dict[str, Any]:
    """What-if over real gRPC on loopback with ``clients`` concurrent callers.

    The solver service runs as deployed, in its own process (``python -m
    solver_svc``; ``server="in-process"`` runs it in this one with
    ``start_service``, where clients and server share one GIL); each client
    thread has its own channel and calls through ``bitmesh.Client``. Queries
    move the BOPs limit with size and latency held (a slider), uniformly
    between the least achievable BOPs and the unconstrained optimum's. Three
    phases, reported apart:

    - ``cold``: right after registration. The service sees a one-limit sweep
      and starts tracing that axis's exhaustive frontier in the background;
      until it covers a query, the query is an exact warm-started solve.
    - ``warm`` (the headline): after the trace has finished, every such query
      is answered from memory, provably optimal.
    - ``multi_budget``: BOPs and size limits both random: exact solves.

    Beside them: ``grpc_floor``, a do-nothing call on the same server, and
    ``raw_grpc_floor``, a bare grpcio server in its own process, both under
    the same concurrency.
    """
    import tempfile

    from bitmesh.client import Client
    from bitmesh.settings import load_settings

    solver = ProblemSolver(case.problem)
    constraints = case.budgets.with_limit("bops", None)
    low = solver.least_achievable("bops", constraints)
    assert low is not None
    high = solver.solve(constraints).totals.bops
    rng = np.random.default_rng(seed)
    path = "own process (python -m solver_svc)" if server == "process" else "in-process"
    out: dict[str, Any] = {"path": f"gRPC loopback, server {path}", "clients": clients}
    with tempfile.TemporaryDirectory() as root:
        settings = load_settings(artifact_root=root)
        stop: Callable[[], None]
        if server == "process":
            proc, address = _start_solver_process(root)
            stop = lambda: _stop_solver_process(proc)  # noqa: E731
        else:
            from bitmesh.rpc.service_main import start_service
            from solver_svc.servicer import build

            running = start_service("solver", build, settings, port=0)
            address = f"127.0.0.1:{running.port}"
            stop = lambda: running.stop(1)  # noqa: E731
        try:
            with Client(settings, addresses={"solver": address}, timeout=120) as c:
                problem_id = c.register_problem(problem_to_pb(case.problem)).problem_id

            def sweep(n: int) -> list[list[Budgets]]:
                limits = rng.uniform(low, high, (clients, n))
                return [[constraints.with_limit("bops", float(x)) for x in row] for row in limits]

            out["grpc_floor"] = _floor(address, settings, clients)
            out["raw_grpc_floor"] = _raw_grpc_floor(clients)
            traced_from = time.perf_counter()
            out["cold"] = _run_clients(address, settings, problem_id, sweep(5))
            # Wait for the trace: it walks from the loose end down, so a query
            # at the tight end is the last to come from memory.
            with Client(settings, addresses={"solver": address}, timeout=120) as c:
                probe = _budgets_pb(constraints.with_limit("bops", low))
                while time.perf_counter() - traced_from < 300:
                    if c.what_if(problem_id, probe).answered_from == "frontier":
                        break
                    time.sleep(0.25)
            out["trace_ready_s"] = time.perf_counter() - traced_from
            out["warm"] = _run_clients(address, settings, problem_id, sweep(queries_per_client))
            size_lo = constraints.size_bytes or 0.0
            multi = [
                [
                    constraints.with_limit("bops", float(rng.uniform(low, high))).with_limit(
                        "size_bytes", float(size_lo * rng.uniform(1.0, 1.15))
                    )
                    for _ in range(3)
                ]
                for _ in range(clients)
            ]
            out["multi_budget"] = _run_clients(address, settings, problem_id, multi)
        finally:
            stop()
    return out


def main_whatif() -> None:
    """``--only whatif``: the what-if latency with the service in its own
    process (the headline) and, for comparison in the same run, in this one."""
    case = random_cases("resnet50-sized", 1, seed=1)[0]
    ProblemSolver(case.problem).solve(case.budgets)  # warm-up, as main does
    results = {}
    for server in ("process", "in-process"):
        results[server] = bench_whatif_grpc(case, server=server)
        print(f"whatif {server}", json.dumps(results[server]), flush=True)
    for server, result in results.items():
        warm, floor, raw = result["warm"], result["grpc_floor"], result["raw_grpc_floor"]
        print(
            f"{server:>10}: what-if p50 {warm['p50_ms']:.2f} ms, p99 {warm['p99_ms']:.2f} ms, "
            f"{warm['qps']:.0f} q/s; do-nothing call p50 {floor['p50_ms']:.2f} ms; "
            f"bare grpcio p50 {raw['p50_ms']:.2f} ms"
        )
    warm = results["process"]["warm"]
    print(
        f"RESULT whatif_p50_ms={warm['p50_ms']:.3f} whatif_p99_ms={warm['p99_ms']:.3f} "
        f"whatif_qps={warm['qps']:.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer instances")
    parser.add_argument(
        "--only", choices=("whatif",), help="run one part: whatif = the gRPC what-if latency"
    )
    args = parser.parse_args(argv)
    if args.only == "whatif":
        main_whatif()
        return
    n50, ntf = (4, 2) if args.quick else (12, 4)
    start = time.perf_counter()
    report: dict[str, object] = {}
    r50 = random_cases("resnet50-sized", n50, seed=1)
    tfs = random_cases("transformer-sized", ntf, seed=2)
    hawq = hawq_cases()
    # Warm-up: first calls pay for imports and first use (OR-Tools' GLOP, PuLP).
    for case in r50[:2]:
        ProblemSolver(case.problem).solve(case.budgets)
    pulp_solve(r50[0].problem, r50[0].budgets)
    report["hawq"] = bench_family(hawq)
    print("hawq", json.dumps(report["hawq"]), flush=True)
    report["resnet50_sized"] = bench_family(r50)
    print("resnet50-sized", json.dumps(report["resnet50_sized"]), flush=True)
    report["transformer_sized"] = bench_family(tfs, with_cpsat=False)
    print("transformer-sized", json.dumps(report["transformer_sized"]), flush=True)
    report["frontier_resnet50_sized"] = bench_frontier(r50[:3], pulp_points=10)
    print("frontier resnet50-sized", json.dumps(report["frontier_resnet50_sized"]), flush=True)
    # One transformer-sized instance: a 100-point sweep of them takes minutes.
    report["frontier_transformer_sized"] = bench_frontier(tfs[:1])
    print(
        "frontier transformer-sized", json.dumps(report["frontier_transformer_sized"]), flush=True
    )
    report["whatif"] = bench_whatif_grpc(r50[0])
    print("whatif", json.dumps(report["whatif"]), flush=True)
    print(f"total {time.perf_counter() - start:.1f} s", flush=True)
    speedup = report["resnet50_sized"]["speedup_median"]  # type: ignore[index]
    frontier_s = report["frontier_resnet50_sized"]["frontier_median_s"]  # type: ignore[index]
    frontier_tf = report["frontier_transformer_sized"]["frontier_median_s"]  # type: ignore[index]
    warm = report["whatif"]["warm"]  # type: ignore[index]
    print(
        f"RESULT speedup_vs_pulp={speedup:.2f} frontier100_s={frontier_s:.3f} "
        f"whatif_p50_ms={warm['p50_ms']:.3f} whatif_qps={warm['qps']:.0f} "
        f"frontier100_transformer_s={frontier_tf:.3f}"
    )


if __name__ == "__main__":
    main()
