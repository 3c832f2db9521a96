"""Load test of the mesh's limits, on loopback only, bounded in calls and time.

Many clients at once, over TLS with the bearer token (the production path),
through ``bitmesh.Client``:

1. queries: what-if queries on the solver (when ``solver_svc.servicer`` is
   there) or layer listings on the real sensitivity service, plus health
   checks; every call must succeed;
2. jobs under the cap: each of ``cap`` clients submits a job, waits for it to
   end, and again; no call may fail;
3. jobs above the cap: with the work held, ``4 x cap`` clients submit at
   once; exactly ``cap`` are accepted, every other call ends with
   RESOURCE_EXHAUSTED, and once the work is released every accepted job
   succeeds (nothing lost).

Phases 2 and 3 run for both ways a service caps jobs: in-process threads
(``ThreadJobRunner``, the sensitivity service's way) and queued work counted
in the job store (``bitmesh.jobs.admission``, the trainer's and proxy NAS's
way, with a stand-in worker draining the queue). The job services are
stand-ins served by the real server factory (TLS, token, metrics, request
ids): the real StartAnalysis/StartJob may not have landed, and their work
(Hessian traces, training) would measure the model, not the limits.

4. hostile: beside a normal load (what-if queries or layer listings, and
   health, from ``clients`` clients), hostile callers send requests over the
   caps (a 3 x 8192 x 8192 input, 2^31-1 classes, a solver problem of
   20,001 layers, over ``BITMESH_SOLVER_MAX_LAYERS``), bytes that do not
   parse, and a flood of watchers (64 streams on one held job, more than ``BITMESH_MAX_CONCURRENT_STREAMS``).
   Every hostile call must end with its expected status (RESOURCE_EXHAUSTED,
   INVALID_ARGUMENT; a watcher served or refused RESOURCE_EXHAUSTED), every
   normal call must succeed (``normal_p99_ms`` is their p99), and every
   service must still answer SERVING afterwards (``service_restarts`` counts
   those that do not: in one process a service that died cannot come back).

Finally the calls counted by the services' Prometheus endpoints are compared
with the calls the clients made. The last line is ``RESULT key=value ...``.

    .venv/bin/python benchmarks/bench_load.py [--clients 16] [--calls 25] [--cap 4] [--watchers 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bitmesh.client import Client  # noqa: E402
from bitmesh.errors import BitmeshError  # noqa: E402
from bitmesh.formats import parse_options  # noqa: E402
from bitmesh.jobs.admission import create_admitted  # noqa: E402
from bitmesh.jobs.plumbing import SENSITIVITY, TRAINER  # noqa: E402
from bitmesh.jobs.records import JobRecord, JobState, new_job_id  # noqa: E402
from bitmesh.jobs.runner import JobContext, ThreadJobRunner  # noqa: E402
from bitmesh.jobs.store import JobStore, open_job_store, transition  # noqa: E402
from bitmesh.rpc.convert import (  # noqa: E402
    job_event_status_to_pb,
    job_status_to_pb,
    option_to_pb,
)
from bitmesh.rpc.jobs import watch_events  # noqa: E402
from bitmesh.rpc.server import RunningServer, create_server  # noqa: E402
from bitmesh.rpc.service_main import start_service  # noqa: E402
from bitmesh.settings import Settings  # noqa: E402
from bitmesh.v1 import (  # noqa: E402
    common_pb2,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    solver_pb2,
    trainer_pb2,
    trainer_pb2_grpc,
)

TOKEN = "bench-token"
OPTIONS = "int4,int8"
WEIGHT_BITS = (4, 8)
TIME_LIMIT_S = 240.0  # the whole run stops past this


# -- certificates ----------------------------------------------------------
def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a localhost server certificate (ca, cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench-ca"))
        .issuer_name(name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- stand-in job services ---------------------------------------------------
class Gate:
    """Holds the stand-in work while closed (phase 3), lets it run when open."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def work(self, seconds: float = 0.02) -> None:
        self.open.wait(TIME_LIMIT_S)
        time.sleep(seconds)


class ThreadedAnalyses(sensitivity_pb2_grpc.SensitivityServiceServicer):
    """StartAnalysis/GetAnalysis over a real ThreadJobRunner (sensitivity's way)."""

    def __init__(self, store: JobStore, cap: int, gate: Gate) -> None:
        self.store, self.gate = store, gate
        self.runner = ThreadJobRunner(store, "sensitivity", cap)

    def StartAnalysis(self, request: Any, context: grpc.ServicerContext) -> common_pb2.JobRef:
        def work(ctx: JobContext) -> dict[str, Any]:
            ctx.report(0.0, stage="working")  # an event for watchers to follow
            self.gate.work()
            return {"ok": True}

        return common_pb2.JobRef(job_id=self.runner.submit({}, work).job_id)

    def GetAnalysis(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self.store.get(request.job_id)
        return sensitivity_pb2.AnalysisResult(status=job_status_to_pb(record))

    def WatchAnalysis(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        def to_event(record: JobRecord, event: dict[str, Any]) -> Any:
            return sensitivity_pb2.SensitivityEvent(status=job_event_status_to_pb(record, event))

        yield from watch_events(self.store, request.job_id, context, to_event)


class QueuedTraining(trainer_pb2_grpc.TrainerServiceServicer):
    """StartJob/GetJob admitted by the open-job count in the store (trainer's way)."""

    def __init__(self, store: JobStore, cap: int) -> None:
        self.store, self.cap = store, cap

    def StartJob(self, request: Any, context: grpc.ServicerContext) -> common_pb2.JobRef:
        record = JobRecord(job_id=new_job_id("training"), kind="training")
        return common_pb2.JobRef(job_id=create_admitted(self.store, record, self.cap).job_id)

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self.store.get(request.job_id)
        return trainer_pb2.TrainingResult(status=job_status_to_pb(record))


class StandInWorker(threading.Thread):
    """Drains queued training jobs like a Celery worker would (bounded by time)."""

    def __init__(self, store: JobStore, gate: Gate, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.store, self.gate, self.stop = store, gate, stop

    def run(self) -> None:
        while not self.stop.is_set():
            queued = [r for r in self.store.list("training", 200) if r.state is JobState.QUEUED]
            if not queued:
                time.sleep(0.01)
                continue
            for record in reversed(queued):  # oldest first
                self.store.update(record.job_id, lambda r: transition(r, state=JobState.RUNNING))
                self.gate.work()
                self.store.update(
                    record.job_id,
                    lambda r: transition(r, state=JobState.SUCCEEDED, progress=1.0, result={}),
                )


# -- measurement -----------------------------------------------------------
class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    @contextmanager
    def call(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except BitmeshError as exc:
            with self.lock:
                self.failures.append(f"{exc.status_name}: {exc.message}")
        finally:
            with self.lock:
                self.latencies.append(time.perf_counter() - start)


def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_clients(count: int, body: Callable[[int], None]) -> None:
    barrier = threading.Barrier(count)

    def start(i: int) -> None:
        barrier.wait(timeout=30)
        body(i)

    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(start, i) for i in range(count)]:
            future.result(timeout=TIME_LIMIT_S)


def scrape_calls(port: int) -> float:
    from tests.metrics_scrape import metric_sum

    return metric_sum(port, lambda s: s.name == "bitmesh_rpc_calls_total", timeout=5)


# -- hostile callers ---------------------------------------------------------
#: Requests over the caps, each with the ends it may have (bitmesh/limits.py,
#: solver_svc/limits.py): (service, method, request, expected codes).
HOSTILE_ROUNDS = 4
#: Where the malformed bytes go: one unary method per service.
GARBAGE_TARGETS = {
    "sensitivity": "/bitmesh.v1.SensitivityService/ListLayers",
    "solver": "/bitmesh.v1.SolverService/WhatIf",
}
ClientFor = Callable[[str, str], Client]


def oversized_requests(has_solver: bool) -> list[tuple[str, str, Any, frozenset[str]]]:
    """One request per cap family, each refused before anything is allocated."""
    refused = frozenset({"RESOURCE_EXHAUSTED"})
    refused_or_malformed = frozenset({"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"})
    out = [
        (
            "sensitivity",
            "ListLayers",
            sensitivity_pb2.ListLayersRequest(
                model=common_pb2.ModelRef(architecture="resnet18", input_shape=[3, 8192, 8192])
            ),
            refused,
        ),
        (
            "sensitivity",
            "ListLayers",
            sensitivity_pb2.ListLayersRequest(
                model=common_pb2.ModelRef(architecture="resnet18", num_classes=2**31 - 1)
            ),
            refused_or_malformed,
        ),
    ]
    # Protocol change (2026-12-04): this was 19,999 one-option layers and one of
    # 256, 5 M dense cells refused at RegisterProblem; problems are stored
    # sparse now, so that one is accepted (it costs its options, not the
    # cells), and the hostile problem is one layer over the layer cap instead.
    if has_solver:  # 20,001 one-option layers: over the layer cap, < 1 MB sent
        too_many = solver_pb2.Problem()
        for i in range(20_001):
            too_many.layers.add(name=f"l{i}", parameters=1).options.add(key="a")
        out.append(
            (
                "solver",
                "RegisterProblem",
                solver_pb2.RegisterProblemRequest(problem=too_many),
                refused,
            )
        )
    return out


@dataclass
class Hostile:
    """What the hostile phase saw."""

    calls: int = 0
    wrong: list[str] = field(default_factory=list)
    watchers_served: int = 0
    watchers_refused: int = 0
    normal: Tally = field(default_factory=lambda: Tally())
    not_serving: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expect(self, what: str, expected: frozenset[str], call: Callable[[], Any]) -> str:
        try:
            call()
            got = "OK"
        except BitmeshError as exc:
            got = exc.status_name
        except grpc.RpcError as exc:
            got = exc.code().name
        with self.lock:
            self.calls += 1
            if got not in expected:
                self.wrong.append(f"{what}: {got}")
        return got


def run_hostile(
    servers: dict[str, RunningServer],
    client_for: ClientFor,
    normal_client: Callable[[int, Tally], None],
    analyses: ThreadedAnalyses,
    gate: Gate,
    args: argparse.Namespace,
    has_solver: bool,
) -> Hostile:
    """Phase 4 (see the module doc): a watcher flood on one held job, then
    oversized and malformed requests side by side with the normal load."""
    out = Hostile()
    services = {"sensitivity": "sensitivity", "analyses": "sensitivity", "training": "trainer"}
    if has_solver:
        services["solver"] = "solver"
    gate.open.clear()  # the job the watchers follow stays running
    watch_client = client_for("sensitivity", "analyses")
    with ExitStack() as stack:
        stack.enter_context(watch_client)
        stack.callback(gate.open.set)
        job = watch_client.start_analysis(sensitivity_pb2.StartAnalysisRequest())
        stub, metadata = watch_client.stub("sensitivity"), watch_client._metadata()
        streams = [
            stub.WatchAnalysis(job, timeout=TIME_LIMIT_S, metadata=metadata)
            for _ in range(args.watchers)
        ]
        for stream in streams:
            stack.callback(stream.cancel)

            def first(stream: Any = stream) -> None:
                next(stream)

            end = out.expect("watcher", frozenset({"OK", "RESOURCE_EXHAUSTED"}), first)
            out.watchers_served += end == "OK"
            out.watchers_refused += end == "RESOURCE_EXHAUSTED"

        def hostile_caller(i: int) -> None:
            with ExitStack() as inner:
                clients = {
                    s: inner.enter_context(client_for(s, s))
                    for s in ("sensitivity", "solver")
                    if s in servers
                }
                for _ in range(HOSTILE_ROUNDS):
                    for service, method, request, expected in oversized_requests(has_solver):
                        c = clients[service]
                        out.expect(
                            f"{service}.{method} over a cap",
                            expected,
                            lambda c=c, service=service, method=method, request=request: c._call(
                                service,
                                method,
                                request,  # type: ignore[arg-type]
                            ),
                        )
                    for service, c in clients.items():
                        garbage = c.channel(service).unary_unary(GARBAGE_TARGETS[service])
                        out.expect(
                            f"{service} bytes that do not parse",
                            frozenset({"INVALID_ARGUMENT"}),
                            lambda g=garbage, c=c: g(
                                b"\xff\xfe not a message \x00" * 8,
                                timeout=30,
                                metadata=c._metadata(),
                            ),
                        )

        with ThreadPoolExecutor(2) as pool:
            normal = pool.submit(run_clients, args.clients, lambda i: normal_client(i, out.normal))
            hostile = pool.submit(run_clients, 4, hostile_caller)
            normal.result(timeout=TIME_LIMIT_S)
            hostile.result(timeout=TIME_LIMIT_S)
        gate.open.set()
        for stream in streams:  # the served ones follow the job to its end
            try:
                for _ in stream:
                    pass
            except grpc.RpcError:
                pass
    for name, service in services.items():
        with client_for(service, name) as c:
            out.not_serving += c.health(service, timeout=10) != "SERVING"  # type: ignore[arg-type]
    return out


# -- the run ---------------------------------------------------------------
def problem_from_layers(reply: Any, seed: int = 0) -> solver_pb2.Problem:
    rng = random.Random(seed)
    layers = []
    for entry in reply.layers:
        base = rng.uniform(0.1, 10.0)
        options = [
            solver_pb2.ProblemOption(
                key=o.option_key,
                option=o.option,
                omega=base * 2.0 ** (-2 * bits),
                costs=o.costs,
                weight_bits=bits,
            )
            for o, bits in zip(entry.options, WEIGHT_BITS, strict=True)
        ]
        layers.append(
            solver_pb2.ProblemLayer(
                name=entry.layer.name, parameters=entry.layer.parameters, options=options
            )
        )
    return solver_pb2.Problem(layers=layers, name="bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=25, help="query calls per client")
    parser.add_argument("--cap", type=int, default=4, help="BITMESH_MAX_CONCURRENT_JOBS")
    parser.add_argument("--rounds", type=int, default=8, help="jobs per client under the cap")
    parser.add_argument("--watchers", type=int, default=64, help="hostile watchers of one job")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    has_solver = importlib.util.find_spec("solver_svc.servicer") is not None

    with tempfile.TemporaryDirectory(prefix="bitmesh-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        ca, cert, key = make_certs(root)
        base = dict(
            host="127.0.0.1",
            artifact_root=str(root / "artifacts"),
            redis_url=None,
            auth_token=TOKEN,
            tls_cert_file=str(cert),
            tls_key_file=str(key),
            max_concurrent_jobs=args.cap,
        )
        servers: dict[str, RunningServer] = {}

        def serve(name: str, start: Callable[[Settings], RunningServer]) -> RunningServer:
            running = start(Settings(**base, metrics_port=free_port()))  # type: ignore[arg-type]
            stack.callback(running.stop, 2)
            servers[name] = running
            return running

        from sensitivity_svc.servicer import build as sensitivity_build

        serve("sensitivity", lambda s: start_service("sensitivity", sensitivity_build, s, port=0))
        if has_solver:
            from solver_svc.servicer import build as solver_build  # type: ignore[import-not-found]

            serve("solver", lambda s: start_service("solver", solver_build, s, port=0))
        gate, stop = Gate(), threading.Event()
        stack.callback(stop.set)
        stack.callback(gate.open.set)
        analyses = ThreadedAnalyses(
            open_job_store(None, str(root / "analyses"), SENSITIVITY.store), args.cap, gate
        )
        stack.callback(analyses.runner.shutdown, 5)
        serve(
            "analyses",
            lambda s: create_server(
                "127.0.0.1:0",
                [
                    lambda srv: sensitivity_pb2_grpc.add_SensitivityServiceServicer_to_server(
                        analyses, srv
                    )
                ],
                ["bitmesh.v1.SensitivityService"],
                s,
            ),
        )
        training_store = open_job_store(None, str(root / "training"), TRAINER.store)
        training = QueuedTraining(training_store, args.cap)
        serve(
            "training",
            lambda s: create_server(
                "127.0.0.1:0",
                [lambda srv: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(training, srv)],
                ["bitmesh.v1.TrainerService"],
                s,
            ),
        )
        StandInWorker(training_store, gate, stop).start()

        client_settings = Settings(**{**base, "tls_ca_file": str(ca)})  # type: ignore[arg-type]

        def client_for(service: str, name: str) -> Client:
            addresses = {service: f"localhost:{servers[name].port}"}
            return Client(client_settings, addresses=addresses, timeout=30)

        # 1. queries ------------------------------------------------------
        queries = Tally()
        options = [option_to_pb(o) for o in parse_options(OPTIONS)]
        layers_request = sensitivity_pb2.ListLayersRequest(
            model=common_pb2.ModelRef(architecture="digits_cnn"), options=options
        )
        with client_for("sensitivity", "sensitivity") as c:
            layers = c.list_layers(layers_request)  # warm the model cache
        problem_id = ""
        budgets: list[common_pb2.Budgets] = []
        if has_solver:
            with client_for("solver", "solver") as c:
                problem_id = c.register_problem(problem_from_layers(layers)).problem_id
            # The least size each layer can take, scales included (the
            # budget counts them): from the codes alone, the tightest budget
            # was one no configuration meets.
            sizes = [
                min(o.costs.size_bytes + o.costs.scale_bytes for o in e.options)
                for e in layers.layers
            ]
            low, high = sum(sizes), 2 * sum(sizes)
            budgets = [
                common_pb2.Budgets(max_size_bytes=low + (high - low) * i / 9) for i in range(10)
            ]

        def query_client(i: int, tally: Tally = queries) -> None:
            with client_for("sensitivity", "sensitivity") as sens, ExitStack() as inner:
                solver = inner.enter_context(client_for("solver", "solver")) if has_solver else None
                for n in range(args.calls):
                    with tally.call():
                        if solver is not None:
                            solver.what_if(problem_id, budgets[(i + n) % len(budgets)])
                        else:
                            sens.list_layers(layers_request)
                    with tally.call():
                        if sens.health("sensitivity") != "SERVING":
                            raise BitmeshError("health check did not answer SERVING")

        t0 = time.perf_counter()
        run_clients(args.clients, query_client)
        query_seconds = time.perf_counter() - t0

        # 2. jobs under the cap ---------------------------------------------
        flavours = {
            "threads": (
                "sensitivity",
                "analyses",
                "start_analysis",
                "get_analysis",
                sensitivity_pb2.StartAnalysisRequest(),
            ),
            "admission": (
                "trainer",
                "training",
                "start_training",
                "get_training",
                trainer_pb2.StartTrainingRequest(),
            ),
        }
        under = {flavour: Tally() for flavour in flavours}
        lost: list[str] = []  # accepted jobs that did not succeed (list.append is atomic)

        def wait_done(c: Client, get: str, job_id: str) -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = getattr(c, get)(job_id).status.state
                if state in (
                    common_pb2.JOB_STATE_SUCCEEDED,
                    common_pb2.JOB_STATE_FAILED,
                    common_pb2.JOB_STATE_CANCELLED,
                ):
                    return str(common_pb2.JobState.Name(state))
                time.sleep(0.01)
            return "TIMEOUT"

        for flavour, (service, name, start, get, request) in flavours.items():

            def job_client(
                i: int,
                service: str = service,
                name: str = name,
                start: str = start,
                get: str = get,
                request: Any = request,
                tally: Tally = under[flavour],
            ) -> None:
                with client_for(service, name) as c:
                    for _ in range(args.rounds):
                        job_id = ""
                        with tally.call():
                            job_id = getattr(c, start)(request).job_id
                        if job_id and wait_done(c, get, job_id) != "JOB_STATE_SUCCEEDED":
                            lost.append(job_id)

            run_clients(args.cap, job_client)

        # 3. jobs above the cap ---------------------------------------------
        over_submitted = over_accepted = over_refused = over_wrong = 0
        for service, name, start, get, request in flavours.values():
            gate.open.clear()
            accepted: list[str] = []
            refusals: list[str] = []
            lock = threading.Lock()

            def burst(
                i: int,
                service: str = service,
                name: str = name,
                start: str = start,
                request: Any = request,
                accepted: list[str] = accepted,
                refusals: list[str] = refusals,
                lock: threading.Lock = lock,
            ) -> None:
                with client_for(service, name) as c:
                    try:
                        job_id = getattr(c, start)(request).job_id
                        with lock:
                            accepted.append(job_id)
                    except BitmeshError as exc:
                        with lock:
                            refusals.append(exc.status_name)

            run_clients(4 * args.cap, burst)
            gate.open.set()
            over_submitted += 4 * args.cap
            over_accepted += len(accepted)
            over_refused += refusals.count("RESOURCE_EXHAUSTED")
            over_wrong += len(refusals) - refusals.count("RESOURCE_EXHAUSTED")
            with client_for(service, name) as c:
                lost += [j for j in accepted if wait_done(c, get, j) != "JOB_STATE_SUCCEEDED"]

        # metrics agree with the clients --------------------------------------
        # The query server's only callers so far were phase 1 and the set-up
        # call (the warm-up listing, or the problem's registration); with no
        # solver, the health checks went to the same server.
        query_server = servers["solver" if has_solver else "sensitivity"]
        expected = 1 + len(queries.latencies) - (len(queries.latencies) // 2 if has_solver else 0)
        metrics_match = int(scrape_calls(query_server.metrics_port) == expected)

        # 4. hostile callers beside a normal load -----------------------------
        hostile = run_hostile(servers, client_for, query_client, analyses, gate, args, has_solver)

    seconds = time.perf_counter() - began
    query_calls = len(queries.latencies)
    result = {
        "clients": args.clients,
        "cap": args.cap,
        "tls": 1,
        "auth": 1,
        "what_if": int(has_solver),
        "query_calls": query_calls,
        "query_failed": len(queries.failures),
        "query_p50_ms": round(percentile_ms(queries.latencies, 0.5), 2),
        "query_p99_ms": round(percentile_ms(queries.latencies, 0.99), 2),
        "query_rps": round(query_calls / query_seconds, 1),
        "jobs_under_cap": sum(len(t.latencies) for t in under.values()),
        **{f"jobs_under_cap_failed_{f}": len(t.failures) for f, t in under.items()},
        "over_cap_submitted": over_submitted,
        "over_cap_accepted": over_accepted,
        "over_cap_refused": over_refused,
        "over_cap_other_errors": over_wrong,
        "jobs_lost": len(lost),
        "metrics_match": metrics_match,
        "hostile_calls": hostile.calls,
        "hostile_wrong_status": len(hostile.wrong),
        "watchers_served": hostile.watchers_served,
        "watchers_refused": hostile.watchers_refused,
        "normal_calls": len(hostile.normal.latencies),
        "normal_failed": len(hostile.normal.failures),
        "normal_p99_ms": round(percentile_ms(hostile.normal.latencies, 0.99), 2),
        "service_restarts": hostile.not_serving,
        "seconds": round(seconds, 1),
    }
    under_failures = [f for t in under.values() for f in t.failures]
    ok = (
        result["query_failed"] == 0
        and not under_failures
        and over_accepted == 2 * args.cap
        and over_wrong == 0
        and not lost
        and metrics_match == 1
        and not hostile.wrong
        and not hostile.normal.failures
        and hostile.not_serving == 0
    )
    for failure in (queries.failures + under_failures + hostile.normal.failures)[:3]:
        print(f"failure: {failure}")
    for wrong in hostile.wrong[:3]:
        print(f"hostile call with an unexpected end: {wrong}")
    print(f"median query latency {result['query_p50_ms']} ms over {query_calls} calls")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in {**result, "ok": int(ok)}.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
