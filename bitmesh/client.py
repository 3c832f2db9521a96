"""``bitmesh.Client``: typed Python methods over the four services' stubs.

One channel per service, a deadline on every call (Watch streams included:
each stream has ``BITMESH_WATCH_SEGMENT_SECONDS`` and is reopened, skipping
what was seen, until the job ends), keepalive pings on every channel so a
vanished server is noticed, and errors mapped back to :mod:`bitmesh.errors`
through a closed table (never by importing names the server sends).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.errors import ERRORS_BY_STATUS, BitmeshError, InvalidArgument
from bitmesh.mesh_state import resolve_addresses
from bitmesh.rpc.keepalive import client_keepalive_options
from bitmesh.settings import SERVICES, ServiceName, Settings, load_settings
from bitmesh.v1 import (
    common_pb2,
    proxy_nas_pb2,
    proxy_nas_pb2_grpc,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    solver_pb2,
    solver_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

T = TypeVar("T")

_STUBS: dict[ServiceName, Any] = {
    "sensitivity": sensitivity_pb2_grpc.SensitivityServiceStub,
    "solver": solver_pb2_grpc.SolverServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
    "proxy_nas": proxy_nas_pb2_grpc.ProxyNasServiceStub,
}


#: What gRPC itself says when a server is at ``maximum_concurrent_rpcs``.
_GRPC_CONCURRENCY_REFUSAL = "Concurrent RPC limit exceeded!"


def error_from_rpc(exc: grpc.RpcError) -> BitmeshError:
    """The domain error for a failed call (closed table; INTERNAL otherwise)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if details == _GRPC_CONCURRENCY_REFUSAL:
        details = (
            "the service is serving as many calls as it takes at once "
            "(BITMESH_MAX_CONCURRENT_RPCS); retry shortly"
        )
    cls = ERRORS_BY_STATUS.get(code.name, BitmeshError)
    error = cls(details or code.name)
    if cls is BitmeshError:
        error.status_name = code.name
    return error


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """TLS trusting ``tls_ca_file``, presenting the client certificate when
    one is set (a server with a client CA requires it: mutual TLS).

    Raises InvalidArgument when only one of the certificate and its key is
    set, or a file cannot be read: the setting to fix is named."""
    cert_file, key_file = settings.tls_client_cert_file, settings.tls_client_key_file
    if bool(cert_file) != bool(key_file):
        raise InvalidArgument(
            "BITMESH_TLS_CLIENT_CERT_FILE and BITMESH_TLS_CLIENT_KEY_FILE go together: "
            "set both (mutual TLS) or neither"
        )
    assert settings.tls_ca_file is not None
    files = {"BITMESH_TLS_CA_FILE": settings.tls_ca_file}
    if cert_file and key_file:
        files |= {
            "BITMESH_TLS_CLIENT_CERT_FILE": cert_file,
            "BITMESH_TLS_CLIENT_KEY_FILE": key_file,
        }
    read: dict[str, bytes] = {}
    for setting, path in files.items():
        try:
            with open(path, "rb") as fh:
                read[setting] = fh.read()
        except OSError as exc:
            raise InvalidArgument(
                f"{setting} {path!r} cannot be read ({exc.strerror or type(exc).__name__})"
            ) from None
    return grpc.ssl_channel_credentials(
        root_certificates=read["BITMESH_TLS_CA_FILE"],
        private_key=read.get("BITMESH_TLS_CLIENT_KEY_FILE"),
        certificate_chain=read.get("BITMESH_TLS_CLIENT_CERT_FILE"),
    )


class _BusyWait:
    """Backoff for a stream the server refused as full (RESOURCE_EXHAUSTED:
    ``BITMESH_MAX_CONCURRENT_STREAMS`` or ``BITMESH_MAX_CONCURRENT_RPCS``):
    0.1 s doubling to 2 s, for at most ``seconds`` in all, after which the
    refusal reaches the caller. A watcher loses nothing by waiting, and a
    burst of watchers then spreads out instead of failing."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.pause = 0.1

    def again(self) -> bool:
        """Sleep before the next try; False when the time is spent."""
        left = self.until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(self.pause, left))
        self.pause = min(2 * self.pause, 2.0)
        return True


class Client:
    """A client of the whole mesh. Use as a context manager to close channels."""

    def __init__(
        self,
        settings: Settings | None = None,
        addresses: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.addresses = resolve_addresses(self.settings, addresses)
        self.timeout = timeout or self.settings.call_timeout_seconds
        self._channels: dict[ServiceName, grpc.Channel] = {}
        # A stub builds one callable per method: about 17 us, paid once per
        # service rather than on every call.
        self._stubs: dict[ServiceName, Any] = {}

    # -- plumbing ----------------------------------------------------------
    def _metadata(self) -> list[tuple[str, str]]:
        token = self.settings.auth_token
        return [("authorization", f"Bearer {token}")] if token else []

    def channel(self, service: ServiceName) -> grpc.Channel:
        if service not in self._channels:
            options = [
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", self.settings.max_message_bytes),
                *client_keepalive_options(self.settings),
            ]
            address = self.addresses[service]
            if self.settings.tls_ca_file:
                creds = channel_credentials(self.settings)
                self._channels[service] = grpc.secure_channel(address, creds, options)
            else:
                self._channels[service] = grpc.insecure_channel(address, options)
        return self._channels[service]

    def stub(self, service: ServiceName) -> Any:
        stub = self._stubs.get(service)
        if stub is None:
            stub = self._stubs[service] = _STUBS[service](self.channel(service))
        return stub

    def _call(
        self, service: ServiceName, method: str, request: Any, timeout: float | None = None
    ) -> Any:
        try:
            return getattr(self.stub(service), method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _stream(
        self, service: ServiceName, method: str, request: Any, timeout: float | None
    ) -> Iterator[Any]:
        """A Watch stream's messages until the job ends.

        A stream the server refuses as full is tried again with backoff for
        up to the client's call timeout (``_BusyWait``).

        ``timeout`` bounds the whole watch (DEADLINE_EXCEEDED past it). Without
        one, each stream has ``watch_segment_seconds``; when that passes the
        stream is opened again and the messages already seen are skipped (the
        server replays a job's events from the first), so a job of any length
        is followed while no single call goes without a deadline.
        """
        seen = 0
        busy = _BusyWait(self.timeout)
        while True:
            call = getattr(self.stub(service), method)(
                request,
                timeout=timeout or self.settings.watch_segment_seconds,
                metadata=self._metadata(),
            )
            index = 0
            try:
                for message in call:
                    index += 1
                    if index > seen:
                        seen = index
                        yield message
                return
            except grpc.RpcError as exc:
                if timeout is None and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # this segment's deadline: reopen and skip what was seen
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and busy.again():
                    continue  # the server serves as many streams as it takes
                raise error_from_rpc(exc) from None
            finally:
                call.cancel()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health ------------------------------------------------------------
    def health(self, service: ServiceName, timeout: float = 2.0) -> str:
        """SERVING / NOT_SERVING / BUSY / UNREACHABLE for one service.

        BUSY: the service answered, but is serving as many calls as it takes
        at once (BITMESH_MAX_CONCURRENT_RPCS), so it refused this one too.
        """
        stub = health_pb2_grpc.HealthStub(self.channel(service))
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "BUSY"
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def health_all(self, timeout: float = 2.0) -> dict[ServiceName, str]:
        return {s: self.health(s, timeout) for s in SERVICES}

    # -- sensitivity -------------------------------------------------------
    def list_layers(
        self, request: sensitivity_pb2.ListLayersRequest
    ) -> sensitivity_pb2.ListLayersResponse:
        return self._call("sensitivity", "ListLayers", request, timeout=max(self.timeout, 120))

    def start_analysis(self, request: sensitivity_pb2.StartAnalysisRequest) -> common_pb2.JobRef:
        return self._call("sensitivity", "StartAnalysis", request, timeout=max(self.timeout, 120))

    def watch_analysis(
        self, job_id: str, timeout: float | None = None
    ) -> Iterator[sensitivity_pb2.SensitivityEvent]:
        return self._stream(
            "sensitivity", "WatchAnalysis", common_pb2.JobRef(job_id=job_id), timeout
        )

    def get_analysis(self, job_id: str) -> sensitivity_pb2.AnalysisResult:
        return self._call("sensitivity", "GetAnalysis", common_pb2.JobRef(job_id=job_id))

    def cancel_analysis(self, job_id: str) -> common_pb2.JobStatus:
        return self._call("sensitivity", "CancelAnalysis", common_pb2.JobRef(job_id=job_id))

    def list_analyses(self, limit: int = 100) -> common_pb2.ListJobsResponse:
        return self._call("sensitivity", "ListAnalyses", common_pb2.ListJobsRequest(limit=limit))

    # -- solver ------------------------------------------------------------
    def register_problem(self, problem: solver_pb2.Problem) -> solver_pb2.RegisterProblemResponse:
        return self._call(
            "solver", "RegisterProblem", solver_pb2.RegisterProblemRequest(problem=problem)
        )

    def solve(self, request: solver_pb2.SolveRequest) -> solver_pb2.Solution:
        return self._call("solver", "Solve", request, timeout=max(self.timeout, 120))

    def frontier(self, request: solver_pb2.FrontierRequest) -> solver_pb2.FrontierResponse:
        return self._call("solver", "Frontier", request, timeout=max(self.timeout, 300))

    def what_if(self, problem_id: str, budgets: common_pb2.Budgets) -> solver_pb2.Solution:
        return self._call(
            "solver", "WhatIf", solver_pb2.WhatIfRequest(problem_id=problem_id, budgets=budgets)
        )

    def list_latency_profiles(self) -> solver_pb2.ListLatencyProfilesResponse:
        return self._call("solver", "ListLatencyProfiles", solver_pb2.ListLatencyProfilesRequest())

    # -- trainer -----------------------------------------------------------
    def start_training(self, request: trainer_pb2.StartTrainingRequest) -> common_pb2.JobRef:
        return self._call("trainer", "StartJob", request)

    def watch_training(
        self, job_id: str, timeout: float | None = None
    ) -> Iterator[trainer_pb2.TrainingEvent]:
        return self._stream("trainer", "WatchJob", common_pb2.JobRef(job_id=job_id), timeout)

    def get_training(self, job_id: str) -> trainer_pb2.TrainingResult:
        return self._call("trainer", "GetJob", common_pb2.JobRef(job_id=job_id))

    def cancel_training(self, job_id: str) -> common_pb2.JobStatus:
        return self._call("trainer", "CancelJob", common_pb2.JobRef(job_id=job_id))

    def list_training(self, limit: int = 100) -> common_pb2.ListJobsResponse:
        return self._call("trainer", "ListJobs", common_pb2.ListJobsRequest(limit=limit))

    # -- proxy NAS ---------------------------------------------------------
    def start_tuning(self, request: proxy_nas_pb2.StartSearchRequest) -> common_pb2.JobRef:
        return self._call("proxy_nas", "StartSearch", request)

    def watch_tuning(
        self, job_id: str, timeout: float | None = None
    ) -> Iterator[proxy_nas_pb2.SearchEvent]:
        return self._stream("proxy_nas", "WatchSearch", common_pb2.JobRef(job_id=job_id), timeout)

    def get_tuning(self, job_id: str) -> proxy_nas_pb2.SearchResult:
        return self._call("proxy_nas", "GetSearch", common_pb2.JobRef(job_id=job_id))

    def cancel_tuning(self, job_id: str) -> common_pb2.JobStatus:
        return self._call("proxy_nas", "CancelSearch", common_pb2.JobRef(job_id=job_id))
