"""Settings from the environment (and CLI flags), one place for every service.

Environment variables use the ``BITMESH_`` prefix (``BITMESH_SOLVER_PORT``),
except ``REDIS_URL``, which is the name every Redis tool already uses. The
Kubernetes manifests set exactly these names; a test checks they do not drift.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bitmesh.tenants import DEFAULT_TENANT, TENANT_NAME_PATTERN

ServiceName = Literal["sensitivity", "solver", "trainer", "proxy_nas"]
SERVICES: tuple[ServiceName, ...] = ("sensitivity", "solver", "trainer", "proxy_nas")


def _default_artifact_root() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "bitmesh")


class Settings(BaseSettings):
    """Every knob of the mesh. Defaults serve the embedded loopback mesh."""

    model_config = SettingsConfigDict(env_prefix="BITMESH_", extra="ignore")

    host: str = "127.0.0.1"
    sensitivity_port: int = 50051
    solver_port: int = 50052
    trainer_port: int = 50053
    proxy_nas_port: int = 50054
    # Addresses of peers (a service calling another, the client); default is
    # host:port of the loopback mesh.
    sensitivity_address: str = ""
    solver_address: str = ""
    trainer_address: str = ""
    proxy_nas_address: str = ""

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "BITMESH_REDIS_URL")
    )
    artifact_root: str = Field(default_factory=_default_artifact_root)

    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_jobs: int = 4
    # Open (queued or running) jobs of one tenant per service, so that no
    # tenant fills a service's queue and starves the others (see
    # bitmesh.jobs.admission). Unset: the global cap, so a single tenant is
    # admitted exactly as before tenants.
    max_jobs_per_tenant: int | None = Field(default=None, ge=1)
    grace_seconds: float = 10.0
    call_timeout_seconds: float = 30.0
    # Calls one server serves at once (gRPC's maximum_concurrent_rpcs); each
    # has a thread of its own, so none waits behind the Watch streams holding
    # the others, and a call past the cap ends RESOURCE_EXHAUSTED at once
    # instead of queueing until its deadline. Health has its own server on
    # BITMESH_HEALTH_PORT, outside this cap.
    max_concurrent_rpcs: int = Field(default=64, ge=1)
    # Of those calls, how many may be response streams (Watch): a stream
    # holds its thread for a job's whole life, so without this cap watchers
    # filled the server and every Get and Start was refused. Always leaves at
    # least one thread to unary calls (bitmesh/rpc/streams.py); a stream past
    # it ends RESOURCE_EXHAUSTED at once and bitmesh.Client retries it.
    max_concurrent_streams: int = Field(default=48, ge=1)
    # Both ends ping every keepalive_seconds while a call is open and drop a
    # peer silent for keepalive_timeout_seconds more (bitmesh/rpc/keepalive.py).
    keepalive_seconds: float = Field(default=30.0, gt=0)
    keepalive_timeout_seconds: float = Field(default=10.0, gt=0)
    # A client's Watch stream has this deadline; when it passes, the client
    # opens the stream again (skipping the events it has seen) until the job
    # ends, so a long job is followed and a vanished server is noticed.
    watch_segment_seconds: float = Field(default=300.0, gt=0)
    # Job durability (bitmesh/jobs/retry.py, bitmesh/jobs/sweeper.py). A
    # running job's store calls retry this long while Redis is unreachable
    # (a restart with AOF takes seconds); past it the job is handed back and
    # resumes from its checkpoint once Redis returns.
    store_retry_seconds: float = Field(default=120.0, ge=0)
    # A job run in a service's threads (an analysis, a search) holds a lease
    # of this TTL, renewed every third of it; once it lapses (the service
    # died) a sweeper, run every sweep_seconds by each replica, resumes the
    # job or ends it FAILED with the reason.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    sweep_seconds: float = Field(default=10.0, gt=0)
    # Starts of one such job (the first, and each resume of an orphan) before
    # it ends FAILED instead: an analysis that kills its service (out of
    # memory) would otherwise be resumed, and kill it again, for ever.
    job_max_attempts: int = Field(default=3, ge=1)
    # A trainer job QUEUED this long with no lease while its queue holds no
    # message is re-sent (its message was lost: docs/architecture.md).
    requeue_after_seconds: float = Field(default=300.0, gt=0)
    log_level: str = "INFO"
    # How long a finished job's record and events stay in its store (running
    # and queued jobs never expire): a trainer job with eval_every=1 writes an
    # event per step, and Redis holds every byte in memory (bitmesh/jobs/store.py).
    job_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # `bitmesh gc` (bitmesh/gc.py) never deletes a blob younger than this: a
    # writer stores a blob first and its reference (a ref, a job result) after.
    gc_min_blob_age_seconds: float = Field(default=3600.0, ge=0)
    # Where torch work runs (bitmesh/devices.py): auto (CUDA when present),
    # cpu, cuda or cuda:N.
    device: str = "auto"
    # How the sensitivity service computes Hessian-vector products
    # (sensitivity_svc/analysis.py): auto (measure on CUDA, one probe per
    # autograd call on a CPU), single, batched (hvp_probes_per_call probes
    # per call, vmap), or measure (the first two rounds time both).
    hvp_strategy: Literal["auto", "single", "batched", "measure"] = "auto"
    hvp_probes_per_call: int = Field(default=8, ge=2, le=64)

    # Solver ceilings (solver_svc/limits.py): every call's time, and the size
    # of a problem before any array is built for it (layers, options). A
    # problem is stored sparse, linear in its options; what a solve builds
    # from it is dense, layer groups x the widest group's options left after
    # dominated options are removed, about 60 bytes per cell while it is
    # solved: the dense-cells cap, 1,000,000 cells, is ~60 MiB, well inside
    # the solver pod's 2 GiB even with several solves at once, and is checked
    # on that pruned instance (a request is not refused for one wide layer).
    solver_default_time_limit_s: float = 30.0
    solver_max_time_limit_s: float = 600.0
    solver_max_layers: int = 20_000
    solver_max_options_per_layer: int = 256
    solver_max_total_options: int = 500_000
    solver_max_dense_cells: int = 1_000_000
    solver_max_frontier_points: int = 1_000
    # Solves one solver process runs at once (solver_svc/limits.py); a call
    # past it waits for a slot within its own time limit, then ends
    # RESOURCE_EXHAUSTED. 64 solves at once starved the process's GIL, and
    # its health port missed a 1 s deadline.
    solver_max_concurrent_solves: int = Field(default=8, ge=1)
    # Options of all the problems the registry keeps loaded together
    # (solver_svc/registry.py), as stored (ties merged, pins applied): about
    # 350 bytes each (the problem's objects ~200, its sparse arrays and key
    # maps ~140) plus the pruned instances its solves keep, so ~350 MiB and
    # up at the default. BITMESH_SOLVER_MAX_LOADED_CELLS, the name when the
    # registry counted dense cells, is still read (deprecated).
    solver_max_loaded_options: int = Field(
        default=1_000_000,
        ge=1,
        validation_alias=AliasChoices(
            "solver_max_loaded_options",
            "BITMESH_SOLVER_MAX_LOADED_OPTIONS",
            "BITMESH_SOLVER_MAX_LOADED_CELLS",
        ),
    )
    # A latency profile a request names by path is read only up to this size
    # (the shipped profiles are a few KiB; a measured table of 20,000 layers x
    # 16 options is about 10 MiB as CSV).
    solver_max_profile_bytes: int = 16 * 1024 * 1024

    # Pixels one image of an image folder may have, checked from its header
    # before it is decoded (PIL's MAX_IMAGE_PIXELS is set to it too): 50 M
    # pixels decode to 150 MB of RGB, inside the 2 GiB a worker pod gets.
    max_image_pixels: int = 50_000_000

    # What one request may make an ML service allocate (bitmesh/limits.py),
    # checked where the request is parsed, before any model or data exists.
    # Sized for the smallest pods that build them (sensitivity 8 GiB, trainer
    # and proxy NAS 2 GiB, which probe a model at batch 1; the 24 GiB workers
    # load the data): one sample of at most 3 x 512 x 512 elements (3 MiB;
    # measured over the ~0.9 GiB a service holds once torch is loaded,
    # building and probing vgg16 (528 MiB of weights) peaked 0.75 GiB higher
    # on it and 1.3 GiB on 3 x 1024 x 1024, past the 2 GiB pods; resnet18
    # 0.1 and 0.3 GiB), at most 32,768 classes (ImageNet-21k fits; a head on
    # VGG's 4096 features is then 512 MiB), batches of at most 4096 samples
    # and an analysis of at most 64 of them, and at most 256 Mi elements
    # (1 GiB of float32) of data held at once: a synthetic set's class means
    # and samples, an analysis's batches, one training batch. Each cap bounds
    # one number; the largest model at every cap at once can still pass a
    # 2 GiB pod, which is what running model code out of the API process is for.
    max_input_elements: int = Field(default=3 * 512 * 512, ge=1)
    max_num_classes: int = Field(default=32_768, ge=1)
    max_batch_size: int = Field(default=4096, ge=1)
    max_batches: int = Field(default=64, ge=1)
    max_data_elements: int = Field(default=256 * 1024 * 1024, ge=1)
    # Batches one calibration job runs forward (streamed, none kept): bounds
    # its time, not its memory. 10,000 batches of 256 is 2.56 M samples, twice
    # ImageNet's training set; the default job runs 8.
    max_calibration_batches: int = Field(default=10_000, ge=1)

    # The model sandbox (bitmesh/models/sandbox/): a child process that loads,
    # checks, probes and describes a user's program file (.pt2) so the API
    # service never runs it. memory: address space a model may add past the
    # child's own after importing torch (the import maps ~3.5 GiB, under
    # 1 GiB resident); 2 GiB holds vgg16's 528 MiB of weights and its probe
    # (0.75 GiB measured) twice over, and the child (~1 GiB resident plus
    # this) fits beside the service in the sensitivity pod's 8 GiB. cpu:
    # seconds of CPU per request (the child runs one thread); wall: seconds
    # per request before the service kills the child, under the clients'
    # 30 s call deadline so a caller sees RESOURCE_EXHAUSTED, not
    # DEADLINE_EXCEEDED; start: seconds the child may take to import torch.
    sandbox_memory_bytes: int = Field(default=2 * 1024**3, ge=64 * 1024**2)
    sandbox_cpu_seconds: int = Field(default=20, ge=1)
    sandbox_wall_seconds: float = Field(default=20.0, gt=0)
    sandbox_start_seconds: float = Field(default=120.0, gt=0)
    # A sensitivity analysis of a program file runs in a child of its own
    # (sensitivity_svc/isolated.py): the address space its model, batches and
    # traces may add past the child's own after importing torch. Within it the
    # child lowers its limit to twice the analysis's memory estimate (plus
    # 512 MiB of slack) once the model is loaded; an estimate above this cap
    # fails the job naming the setting.
    analysis_memory_bytes: int = Field(default=4 * 1024**3, ge=64 * 1024**2)
    # Program analyses whose children run at once (the others wait in their
    # job, RUNNING and cancellable): the pod's memory limit holds this many
    # children of BITMESH_ANALYSIS_MEMORY_BYTES beside the service.
    analysis_max_children: int = Field(default=1, ge=1)
    # Seconds one program analysis's child may run before it is killed and its
    # job fails naming this (the traces of a resnet18 take seconds to minutes).
    analysis_wall_seconds: float = Field(default=3600.0, gt=0)
    # Keep one analysis child started ahead (its torch import done, ~0.75 GiB
    # resident, waiting), so an analysis of a program does not wait seconds
    # for it; each child still serves one analysis only. Off: none is kept.
    analysis_spare_child: bool = True

    # Security (off on loopback; on in the Kubernetes manifests).
    # The shared bearer token: the tenant "default" (bitmesh/tenants.py). A
    # client sends it (or its own tenant's token) on every call.
    auth_token: str | None = None
    # Servers: a file of "tenant: token" lines, one tenant per token; each
    # tenant's jobs and files are its own (docs/architecture.md, Tenants).
    token_file: str | None = None
    # Clients that write into the shared artifact root (`bitmesh run`'s
    # uploads, reading trained weights back): the tenant of their token, whose
    # namespace (<root>/tenants/<name>, the root for "default") they use.
    tenant: str = Field(default=DEFAULT_TENANT, pattern=TENANT_NAME_PATTERN)
    # A service bound to a non-loopback address without a token refuses to
    # start unless this is set (BITMESH_ALLOW_INSECURE=1): a network you trust.
    allow_insecure: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Servers: with a client CA, every caller must present a certificate it
    # signed (mutual TLS).
    tls_client_ca_file: str | None = None
    tls_ca_file: str | None = None  # for clients: the CA that signed the servers
    # Clients (bitmesh.Client, and each service calling another): the
    # certificate and key presented to a server that asks for one.
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    metrics_port: int = 0  # 0 = no Prometheus endpoint
    # A plaintext port serving only the health service (Kubernetes' native gRPC
    # probes cannot do TLS or send a token); 0 = none.
    health_port: int = 0

    def port_of(self, service: ServiceName) -> int:
        port: int = getattr(self, f"{service}_port")
        return port

    def address_of(self, service: ServiceName) -> str:
        explicit: str = getattr(self, f"{service}_address")
        return explicit or f"{self.host}:{self.port_of(service)}"

    @property
    def tenant_job_cap(self) -> int:
        """BITMESH_MAX_JOBS_PER_TENANT, or the global cap when it is unset."""
        return self.max_jobs_per_tenant or self.max_concurrent_jobs

    @property
    def artifact_uri(self) -> str:
        return self.artifact_root


def _environment_key() -> tuple[tuple[str, str], ...]:
    """Every variable the settings read (names are case-insensitive), and
    those the default artifact root follows."""
    return tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.upper().startswith("BITMESH_")
            or name.upper() == "REDIS_URL"
            or name in ("XDG_CACHE_HOME", "HOME")
        )
    )


#: The last settings read from the environment, by the variables they came from.
_last: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment with explicit overrides (CLI flags) on top.

    Without overrides, the settings are parsed again only when a variable
    they read has changed: a parse is ~10-20 ms of pydantic on the shared
    2-core machine, and the request paths read the settings several times
    per request (a training job's validation did 21 times). Each caller gets
    a copy of its own.
    """
    global _last
    clean = {k: v for k, v in overrides.items() if v is not None}
    if clean:
        return Settings(**clean)  # type: ignore[arg-type]
    key = _environment_key()
    last = _last
    if last is None or last[0] != key:
        last = (key, Settings())
        _last = last
    return last[1].model_copy()
