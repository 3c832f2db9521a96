"""A program file at submission is judged in the sandbox, never loaded by the
API process (issue 16): the trainer's StartJob and proxy NAS's StartSearch
(its first trial's checks and its budget problem) over real servers.

The servers run in this test's process, so "never loaded here" is observed
directly: ``torch.export.load`` (the only way a ``.pt2`` is read) is wrapped
to record every path this process loads, and the process's model cache
(:mod:`bitmesh.models.model_cache`) must not hold the program. The budget
problem's Omegas, computed from the weights in the sandbox child, are
compared with the same computation on a model loaded here afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from torch import nn

from bitmesh.formats import parse_option
from bitmesh.models import model_cache
from bitmesh.models.sandbox import default_sandbox
from bitmesh.models.spec import ModelSpec
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, proxy_nas_pb2, proxy_nas_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

INPUT_SHAPE = (6,)
NUM_CLASSES = 3
LAYERS = ["fc1", "fc2"]
#: Every call's deadline: a first sandbox start (a torch import) on a busy machine.
DEADLINE_S = 120.0
CANDIDATES = ("int4", "int8")


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(INPUT_SHAPE[0], 16)
        self.fc2 = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _option(name: str) -> common_pb2.QuantOption:
    return common_pb2.QuantOption(weight=common_pb2.NumericFormat(name=name))


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-layer program with seeded, non-trivial weights."""
    torch.manual_seed(7)
    model = _Mlp().eval()
    exported = torch.export.export(
        model,
        (torch.randn(2, *INPUT_SHAPE),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    path = tmp_path_factory.mktemp("program") / "mlp.pt2"
    torch.export.save(exported, path)
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    """A solver, and the trainer and proxy NAS that submit against it (no
    worker: the jobs they accept stay queued, which is all this needs)."""
    from proxy_nas_svc.servicer import build as proxy_nas
    from solver_svc.servicer import build as solver
    from trainer_svc.servicer import build as trainer

    root = tmp_path_factory.mktemp("root")
    started: dict[str, RunningServer] = {}
    try:
        started["solver"] = start_service("solver", solver, make_settings(root), port=0)
        settings = make_settings(root, solver_address=f"127.0.0.1:{started['solver'].port}")
        started["trainer"] = start_service("trainer", trainer, settings, port=0)
        started["proxy_nas"] = start_service("proxy_nas", proxy_nas, settings, port=0)
        yield started
    finally:
        for running in started.values():
            running.stop(0)


@pytest.fixture
def loads_here(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path ``torch.export.load`` is called with in this process."""
    seen: list[str] = []
    real = torch.export.load

    def recording(f: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch.export, "load", recording)
    model_cache.forget_models()
    return seen


def _model(path: Path) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(
        exported_program=str(path), input_shape=list(INPUT_SHAPE), num_classes=NUM_CLASSES
    )


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(
        source="exported_program",
        name_or_path=str(path),
        input_shape=INPUT_SHAPE,
        num_classes=NUM_CLASSES,
    )


def _synthetic() -> common_pb2.DatasetRef:
    return common_pb2.DatasetRef(
        kind=common_pb2.DATASET_KIND_SYNTHETIC, shape=list(INPUT_SHAPE), num_classes=NUM_CLASSES
    )


def _never_loaded_here(program: Path, loads_here: list[str]) -> None:
    assert str(program) not in loads_here and not loads_here, loads_here
    assert not any(spec.name_or_path == str(program) for spec, _ in model_cache._loaded)


def _trainer(servers: dict[str, RunningServer]) -> Callable[..., common_pb2.JobRef]:
    channel = grpc.insecure_channel(f"127.0.0.1:{servers['trainer'].port}")
    return lambda request: trainer_pb2_grpc.TrainerServiceStub(channel).StartJob(
        request, timeout=DEADLINE_S
    )


def test_start_job_checks_a_program_from_the_sandbox_table(
    servers: dict[str, RunningServer], program: Path, loads_here: list[str]
) -> None:
    start = _trainer(servers)
    qat = trainer_pb2.StartTrainingRequest(
        model=_model(program),
        dataset=_synthetic(),
        qat=trainer_pb2.QatSpec(default_option=_option("int8")),
    )
    assert start(qat).job_id
    search = trainer_pb2.StartTrainingRequest(
        model=_model(program),
        dataset=_synthetic(),
        search=trainer_pb2.SearchSpec(
            formats=[common_pb2.NumericFormat(name=n) for n in CANDIDATES],
            target_axis=common_pb2.COST_AXIS_SIZE,
            target_option=_option("int4"),
            tie_groups=["fc1,fc2"],
        ),
    )
    assert start(search).job_id
    # The checks ran on the table: a layer the program lacks, and a target
    # no format reaches, are refused with the program's own layer names.
    wrong = trainer_pb2.StartTrainingRequest()
    wrong.CopyFrom(qat)
    wrong.qat.config.layers.add(layer="fc9", option=_option("int4"))
    with pytest.raises(grpc.RpcError) as caught:
        start(wrong)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fc9" in (caught.value.details() or "") and "fc1, fc2" in (caught.value.details() or "")
    unreachable = trainer_pb2.StartTrainingRequest()
    unreachable.CopyFrom(search)
    unreachable.search.target_option.CopyFrom(_option("int2"))
    with pytest.raises(grpc.RpcError) as caught:
        start(unreachable)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    _never_loaded_here(program, loads_here)


def test_a_budget_search_on_a_program_solves_without_loading_it_here(
    servers: dict[str, RunningServer], program: Path, loads_here: list[str]
) -> None:
    request = proxy_nas_pb2.StartSearchRequest(
        model=_model(program),
        dataset=_synthetic(),
        budgets=common_pb2.Budgets(max_avg_weight_bits=12),
        candidates=[_option(n) for n in CANDIDATES],
        space=[
            proxy_nas_pb2.Hyperparameter(
                name="learning_rate", categorical=proxy_nas_pb2.Categorical(choices=["0.1"])
            )
        ],
        trials=1,
        fidelity=[proxy_nas_pb2.Rung(data_fraction=1.0, steps=1)],
    )
    with grpc.insecure_channel(f"127.0.0.1:{servers['proxy_nas'].port}") as channel:
        stub = proxy_nas_pb2_grpc.ProxyNasServiceStub(channel)
        job = stub.StartSearch(request, timeout=DEADLINE_S)
        assert job.job_id
        stub.CancelSearch(job, timeout=30)
    _never_loaded_here(program, loads_here)


def test_the_sandboxed_omegas_equal_the_in_process_ones(
    program: Path, loads_here: list[str]
) -> None:
    from bitmesh.models.loading import load_model
    from bitmesh.quant.fake_quant import weight_error_sq
    from proxy_nas_svc.validate import budget_problem

    options = [parse_option(n) for n in (*CANDIDATES, "int4:pt", "e4m3")]
    problem = budget_problem(_spec(program), options)
    _never_loaded_here(program, loads_here)
    assert [layer.name for layer in problem.layers] == LAYERS
    model = load_model(_spec(program))  # now, for the reference, here
    assert loads_here == [str(program)]
    for layer in problem.layers:
        weight = model.get_submodule(layer.name).weight
        expected = [weight_error_sq(weight, o.weight, o.granularity) for o in options]
        assert [o.omega for o in layer.options] == pytest.approx(expected, rel=1e-9)
        assert [o.key for o in layer.options] == [o.key for o in options]
        assert all(value > 0 for value in expected)
    assert default_sandbox().starts >= 1


def test_too_many_options_are_refused_before_the_child(program: Path) -> None:
    from bitmesh.errors import InvalidArgument
    from bitmesh.models.sandbox.table import MAX_ERROR_OPTIONS

    options = [parse_option("int8")] * (MAX_ERROR_OPTIONS + 1)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_ERROR_OPTIONS}"):
        default_sandbox().weight_errors(_spec(program), options)
