"""Tenants kept apart, over real servers on loopback (issue 16, "Tenants test").

One mesh root, a token file with two tenants (alice, bob) beside the shared
token (the tenant ``default``), and the four services started as in
production (``start_service``; the trainer and proxy NAS on the embedded
queue, with no worker: their jobs stay open, which is all these need). Each tenant sees its own jobs, problems and files; every
other tenant's are NOT_FOUND with exactly the answer a thing that does not
exist gets, so nothing hints that they exist. Trainer jobs are run the way a
Celery worker runs them (``trainer_svc.jobs.run_job`` with the mesh's root
store), so the tenant is shown to travel with the job record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitmesh.artifacts import ArtifactStore
from bitmesh.jobs.plumbing import TRAINER
from bitmesh.jobs.store import open_job_store
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
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
from tests.integration.security.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
TENANTS = ("alice", "bob", "default")
MISSING_JOB = "sensitivity-0000000000000000"
FAST = sensitivity_pb2.EstimatorSettings(
    target_relative_se=0.5, max_samples=10, seed=1, num_batches=1
)
DIGITS = common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS, batch_size=32)
INT8 = common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int8"))


def auth(tenant: str) -> tuple[tuple[str, str], ...]:
    token = TOKEN if tenant == "default" else TOKENS[tenant]
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Mesh:
    root: Path
    servers: dict[str, RunningServer]
    channels: dict[str, grpc.Channel]

    def sensitivity(self) -> sensitivity_pb2_grpc.SensitivityServiceStub:
        return sensitivity_pb2_grpc.SensitivityServiceStub(self.channels["sensitivity"])

    def solver(self) -> solver_pb2_grpc.SolverServiceStub:
        return solver_pb2_grpc.SolverServiceStub(self.channels["solver"])

    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.channels["trainer"])

    def proxy_nas(self) -> proxy_nas_pb2_grpc.ProxyNasServiceStub:
        return proxy_nas_pb2_grpc.ProxyNasServiceStub(self.channels["proxy_nas"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from proxy_nas_svc.servicer import build as proxy_nas
    from sensitivity_svc.servicer import build as sensitivity
    from solver_svc.servicer import build as solver
    from trainer_svc.servicer import build as trainer

    root = tmp_path_factory.mktemp("tenants")
    token_file = tmp_path_factory.mktemp("secret") / "tokens"
    token_file.write_text("# tenant: token\n" + "".join(f"{t}: {k}\n" for t, k in TOKENS.items()))
    settings = make_settings(root, auth_token=TOKEN, token_file=str(token_file))
    builds = {
        "sensitivity": sensitivity,
        "solver": solver,
        "trainer": trainer,
        "proxy_nas": proxy_nas,
    }
    servers: dict[str, RunningServer] = {}
    channels: dict[str, grpc.Channel] = {}
    try:
        for name, build in builds.items():
            servers[name] = start_service(name, build, settings, port=0)  # type: ignore[arg-type]
            channels[name] = grpc.insecure_channel(f"127.0.0.1:{servers[name].port}")
        yield Mesh(root, servers, channels)
    finally:
        for channel in channels.values():
            channel.close()
        for server in servers.values():
            server.stop(1)


def refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error ``call(*args, **kwargs)`` ends with."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):  # a stream fails on its first read
            next(result)
    return info.value


def same_as_missing(error: grpc.RpcError, real_id: str, missing: grpc.RpcError, missing_id: str):  # type: ignore[no-untyped-def]
    """Another tenant's thing is answered exactly as a missing one: the same
    status and the same message, but for the id the caller sent."""
    assert missing.code() is grpc.StatusCode.NOT_FOUND, missing.details()
    assert error.code() is grpc.StatusCode.NOT_FOUND, error.details()
    assert error.details().replace(real_id, "<id>") == missing.details().replace(missing_id, "<id>")


# -- sensitivity: jobs ---------------------------------------------------------
@pytest.fixture(scope="module")
def analyses(mesh: Mesh) -> dict[str, str]:
    """One finished analysis per tenant, the same request for each."""
    stub = mesh.sensitivity()
    request = sensitivity_pb2.StartAnalysisRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=DIGITS,
        options=[INT8],
        settings=FAST,
    )
    jobs = {}
    for tenant in TENANTS:
        job_id = stub.StartAnalysis(request, metadata=auth(tenant), timeout=60).job_id
        events = list(
            stub.WatchAnalysis(common_pb2.JobRef(job_id=job_id), metadata=auth(tenant), timeout=120)
        )
        assert events[-1].status.state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].status.error
        jobs[tenant] = job_id
    return jobs


@pytest.mark.parametrize("method", ["GetAnalysis", "WatchAnalysis", "CancelAnalysis"])
def test_another_tenants_analysis_is_not_found_as_a_missing_one(
    mesh: Mesh, analyses: dict[str, str], method: str
) -> None:
    stub = mesh.sensitivity()
    call = getattr(stub, method)
    for caller in TENANTS:
        missing = refusal(
            call, common_pb2.JobRef(job_id=MISSING_JOB), metadata=auth(caller), timeout=30
        )
        for owner, job_id in analyses.items():
            ref = common_pb2.JobRef(job_id=job_id)
            if owner == caller:
                reply = call(ref, metadata=auth(caller), timeout=30)
                assert reply is not None
                continue
            error = refusal(call, ref, metadata=auth(caller), timeout=30)
            same_as_missing(error, job_id, missing, MISSING_JOB)
    for owner, job_id in analyses.items():  # nobody else's cancel touched them
        result = stub.GetAnalysis(common_pb2.JobRef(job_id=job_id), metadata=auth(owner))
        assert result.status.state == common_pb2.JOB_STATE_SUCCEEDED, owner


def test_each_tenant_lists_only_its_own_analyses(mesh: Mesh, analyses: dict[str, str]) -> None:
    stub = mesh.sensitivity()
    for tenant in TENANTS:
        listed = stub.ListAnalyses(common_pb2.ListJobsRequest(), metadata=auth(tenant), timeout=30)
        assert [job.job_id for job in listed.jobs] == [analyses[tenant]], tenant


def test_report_caches_are_per_tenant(mesh: Mesh, analyses: dict[str, str]) -> None:
    """The same request by three tenants ran three times (no tenant is
    answered from another's stored report, which would tell it that someone
    analysed that model); the owner's own cache still answers it."""
    stub = mesh.sensitivity()
    for tenant, job_id in analyses.items():
        result = stub.GetAnalysis(common_pb2.JobRef(job_id=job_id), metadata=auth(tenant))
        assert not result.report.cached, tenant
    assert (mesh.root / "tenants" / "alice" / "refs").is_dir()
    assert (mesh.root / "tenants" / "bob" / "refs").is_dir()


def test_an_unknown_token_is_unauthenticated(mesh: Mesh) -> None:
    stub = mesh.sensitivity()
    wrong = (("authorization", "Bearer mallory-token-0123456789"),)
    error = refusal(lambda: stub.ListAnalyses(common_pb2.ListJobsRequest(), metadata=wrong))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = refusal(lambda: stub.ListAnalyses(common_pb2.ListJobsRequest()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


# -- files: every path-taking field ------------------------------------------
@pytest.fixture(scope="module")
def bobs_weights(mesh: Mesh) -> Path:
    """A real digits_cnn state_dict among bob's uploads."""
    import torch

    from bitmesh.models.digits_cnn import build_digits_cnn

    path = mesh.root / "tenants" / "bob" / "uploads" / "mine" / "digits.pt"
    path.parent.mkdir(parents=True)
    torch.save(build_digits_cnn(10, (1, 8, 8)).state_dict(), path)
    return path


def _layers(mesh: Mesh, tenant: str, **model: str) -> sensitivity_pb2.ListLayersResponse:
    request = sensitivity_pb2.ListLayersRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn", **model), options=[INT8]
    )
    return mesh.sensitivity().ListLayers(request, metadata=auth(tenant), timeout=60)


def test_a_tenant_reads_its_own_upload(mesh: Mesh, bobs_weights: Path) -> None:
    assert _layers(mesh, "bob", weights=str(bobs_weights)).layers
    assert _layers(mesh, "bob", weights="mine/digits.pt").layers  # relative: bob's uploads


def test_another_tenants_files_are_not_found_as_missing_ones(
    mesh: Mesh, bobs_weights: Path
) -> None:
    """Absolute paths into bob's namespace, an existing file and a missing
    one, for each path-taking field: the same NOT_FOUND, the same words."""
    missing = bobs_weights.parent / "absent.pt"
    dataset_folder = bobs_weights.parent  # exists; an image-folder dataset's path
    for caller in ("alice", "default"):
        for field in ("weights", "exported_program"):
            seen = refusal(_layers, mesh, caller, **{field: str(bobs_weights)})
            unseen = refusal(_layers, mesh, caller, **{field: str(missing)})
            same_as_missing(seen, str(bobs_weights), unseen, str(missing))
        folder = sensitivity_pb2.StartAnalysisRequest(
            model=common_pb2.ModelRef(architecture="digits_cnn"),
            dataset=common_pb2.DatasetRef(
                kind=common_pb2.DATASET_KIND_IMAGE_FOLDER, path=str(dataset_folder)
            ),
        )
        start = mesh.sensitivity().StartAnalysis
        seen = refusal(start, folder, metadata=auth(caller), timeout=30)
        folder.dataset.path = str(dataset_folder / "absent")
        unseen = refusal(start, folder, metadata=auth(caller), timeout=30)
        same_as_missing(seen, str(dataset_folder), unseen, str(dataset_folder / "absent"))
    # A relative path is the caller's own uploads, never bob's.
    error = refusal(lambda: _layers(mesh, "alice", weights="mine/digits.pt"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert str(mesh.root / "tenants" / "alice" / "uploads") in error.details()


def test_a_latency_profile_path_is_confined_too(mesh: Mesh) -> None:
    profile = mesh.root / "tenants" / "bob" / "uploads" / "profile.csv"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text("layer,option,latency_ms\n")
    solve = solver_pb2.SolveRequest(
        problem=_problem(), budgets=common_pb2.Budgets(latency_profile=str(profile))
    )
    seen = refusal(lambda: mesh.solver().Solve(solve, metadata=auth("alice"), timeout=30))
    absent = str(profile.with_name("absent.csv"))
    solve.budgets.latency_profile = absent
    unseen = refusal(lambda: mesh.solver().Solve(solve, metadata=auth("alice"), timeout=30))
    same_as_missing(seen, str(profile), unseen, absent)


# -- solver: registered problems -----------------------------------------------
def _problem() -> solver_pb2.Problem:
    layers = [
        solver_pb2.ProblemLayer(
            name=f"l{i}",
            parameters=8000,
            options=[
                solver_pb2.ProblemOption(
                    key=f"int{bits}",
                    omega=(i + 1) / bits,
                    weight_bits=bits,
                    option=common_pb2.QuantOption(
                        weight=common_pb2.NumericFormat(name=f"int{bits}")
                    ),
                    costs=common_pb2.LayerCosts(size_bytes=1000 * bits),
                )
                for bits in (4, 8)
            ],
        )
        for i in range(3)
    ]
    return solver_pb2.Problem(layers=layers, name="tenants")


def test_a_registered_problem_is_its_tenants_own(mesh: Mesh) -> None:
    stub = mesh.solver()
    register = solver_pb2.RegisterProblemRequest(problem=_problem())
    problem_id = stub.RegisterProblem(register, metadata=auth("alice"), timeout=30).problem_id
    budgets = common_pb2.Budgets(max_size_bytes=14_000)
    mine = stub.Solve(
        solver_pb2.SolveRequest(problem_id=problem_id, budgets=budgets), metadata=auth("alice")
    )
    assert mine.status == solver_pb2.SOLVE_STATUS_OPTIMAL
    absent = "p-" + "0" * 32
    calls: list[Callable[[str, str], Any]] = [
        lambda pid, who: stub.Solve(
            solver_pb2.SolveRequest(problem_id=pid, budgets=budgets), metadata=auth(who)
        ),
        lambda pid, who: stub.WhatIf(
            solver_pb2.WhatIfRequest(problem_id=pid, budgets=budgets), metadata=auth(who)
        ),
        lambda pid, who: stub.Frontier(
            solver_pb2.FrontierRequest(problem_id=pid, points=2, axis=common_pb2.COST_AXIS_SIZE),
            metadata=auth(who),
        ),
    ]
    for call in calls:
        for caller in ("bob", "default"):
            seen = refusal(lambda c=call, w=caller: c(problem_id, w))
            unseen = refusal(lambda c=call, w=caller: c(absent, w))
            same_as_missing(seen, problem_id, unseen, absent)


# -- trainer: jobs, run as a worker runs them ------------------------------------
def _training() -> trainer_pb2.StartTrainingRequest:
    return trainer_pb2.StartTrainingRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS),
        qat=trainer_pb2.QatSpec(default_option=INT8),
        training=trainer_pb2.TrainingSettings(steps=2, batch_size=16, eval_every=0),
        request_id="the-same-key",
    )


@pytest.fixture(scope="module")
def trained(mesh: Mesh) -> dict[str, str]:
    """alice's and bob's training jobs, with the same idempotency key, run to
    the end by the worker's domain function on the mesh's root store."""
    from trainer_svc.jobs import run_job

    stub = mesh.trainer()
    jobs = {t: stub.StartJob(_training(), metadata=auth(t), timeout=120).job_id for t in TOKENS}
    assert jobs["alice"] != jobs["bob"], "one tenant's idempotency key found another's job"
    store = open_job_store(None, str(mesh.root), TRAINER.store)
    for job_id in jobs.values():
        run_job(job_id, store, ArtifactStore(str(mesh.root)))
    return jobs


def test_a_trainer_job_writes_into_its_tenants_namespace(
    mesh: Mesh, trained: dict[str, str]
) -> None:
    for tenant, job_id in trained.items():
        result = mesh.trainer().GetJob(common_pb2.JobRef(job_id=job_id), metadata=auth(tenant))
        assert result.status.state == common_pb2.JOB_STATE_SUCCEEDED, result.status.error
        weights = result.weights.uri.removeprefix("file://")
        assert Path(weights).is_relative_to(mesh.root / "tenants" / tenant / "cas"), weights
        # Its owner can train on from those weights; nobody else can read them.
        follow_on = _training()
        follow_on.model.weights = weights
        follow_on.request_id = ""
        other = "bob" if tenant == "alice" else "alice"
        error = refusal(mesh.trainer().StartJob, follow_on, metadata=auth(other), timeout=120)
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert "in the files of tenant" in error.details()
        mine = mesh.trainer().StartJob(follow_on, metadata=auth(tenant), timeout=120)
        mesh.trainer().CancelJob(mine, metadata=auth(tenant))


@pytest.mark.parametrize("method", ["GetJob", "WatchJob", "CancelJob"])
def test_another_tenants_training_job_is_not_found(
    mesh: Mesh, trained: dict[str, str], method: str
) -> None:
    call = getattr(mesh.trainer(), method)
    absent = "train-0000000000000000"
    for caller, owner in (("bob", "alice"), ("alice", "bob"), ("default", "alice")):
        job_id = trained[owner]
        seen = refusal(call, common_pb2.JobRef(job_id=job_id), metadata=auth(caller))
        unseen = refusal(call, common_pb2.JobRef(job_id=absent), metadata=auth(caller))
        same_as_missing(seen, job_id, unseen, absent)


def test_each_tenant_lists_only_its_own_training_jobs(mesh: Mesh, trained: dict[str, str]) -> None:
    stub = mesh.trainer()
    for tenant in TENANTS:
        listed = stub.ListJobs(common_pb2.ListJobsRequest(), metadata=auth(tenant), timeout=30)
        ids = {job.job_id for job in listed.jobs}
        others = {job_id for owner, job_id in trained.items() if owner != tenant}
        assert not ids & others, tenant
        if tenant in trained:
            assert trained[tenant] in ids


# -- proxy NAS: searches ---------------------------------------------------------
@pytest.fixture(scope="module")
def searches(mesh: Mesh) -> Iterator[dict[str, str]]:
    """An open search per tenant (no worker takes its trials), cancelled after."""
    layers = [
        common_pb2.LayerConfig(layer=name, option=INT8)
        for name in ("conv1", "conv2", "conv3", "fc1", "fc2")
    ]
    request = proxy_nas_pb2.StartSearchRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS),
        config=common_pb2.QuantConfig(layers=layers),
        space=[
            proxy_nas_pb2.Hyperparameter(
                name="learning_rate",
                categorical=proxy_nas_pb2.Categorical(choices=["0.002", "0.02"]),
            )
        ],
        trials=2,
        fidelity=[proxy_nas_pb2.Rung(data_fraction=0.25, steps=4)],
        full_fidelity=proxy_nas_pb2.Rung(data_fraction=0.5, steps=8),
        parallel_trials=1,
        request_id="the-same-key",
    )
    stub = mesh.proxy_nas()
    jobs = {t: stub.StartSearch(request, metadata=auth(t), timeout=120).job_id for t in TENANTS}
    assert len(set(jobs.values())) == len(TENANTS), "an idempotency key crossed tenants"
    yield jobs
    for tenant, job_id in jobs.items():
        stub.CancelSearch(common_pb2.JobRef(job_id=job_id), metadata=auth(tenant), timeout=30)


@pytest.mark.parametrize("method", ["GetSearch", "WatchSearch", "CancelSearch"])
def test_another_tenants_search_is_not_found(
    mesh: Mesh, searches: dict[str, str], method: str
) -> None:
    call = getattr(mesh.proxy_nas(), method)
    absent = "tune-0000000000000000"
    for caller in TENANTS:
        unseen = refusal(call, common_pb2.JobRef(job_id=absent), metadata=auth(caller))
        for owner, job_id in searches.items():
            if owner != caller:
                seen = refusal(call, common_pb2.JobRef(job_id=job_id), metadata=auth(caller))
                same_as_missing(seen, job_id, unseen, absent)
    for owner, job_id in searches.items():  # still open: no other tenant cancelled it
        result = mesh.proxy_nas().GetSearch(
            common_pb2.JobRef(job_id=job_id), metadata=auth(owner), timeout=30
        )
        assert result.status.state != common_pb2.JOB_STATE_CANCELLED, owner


def test_each_tenant_lists_only_its_own_searches(mesh: Mesh, searches: dict[str, str]) -> None:
    stub = mesh.proxy_nas()
    for tenant in TENANTS:
        listed = stub.ListSearches(common_pb2.ListJobsRequest(), metadata=auth(tenant), timeout=30)
        assert [job.job_id for job in listed.jobs] == [searches[tenant]], tenant
