"""Caps on what one request makes an ML service allocate, through real servers
(issue 16): input elements, classes, batch size, batch count and data held in
memory, each refused where the request is parsed, before a model or tensor
exists.

Measured before the caps: ListLayers for resnet18 on ``[3, 8192, 8192]`` held
the sensitivity service past the client's 60 s deadline, ``num_classes``
2^31-1 ended INTERNAL, and resnet18 on ``[3, 4096, 4096]`` or a synthetic
``[3, 512, 512]`` set of 3,000 classes OOM-killed the service. Here each is
answered RESOURCE_EXHAUSTED (INVALID_ARGUMENT for a malformed number) well
within a 10 s deadline, naming the setting to raise, and the service still
answers SERVING. The default caps are the ones under test (bitmesh/limits.py);
one test lowers a cap through the environment to show the setting is live.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import ServiceName, Settings
from bitmesh.v1 import (
    common_pb2,
    proxy_nas_pb2,
    proxy_nas_pb2_grpc,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

#: No refusal comes near it: without the caps the first case ran past 60 s.
DEADLINE_S = 10.0
SERVICES: tuple[ServiceName, ...] = ("sensitivity", "trainer", "proxy_nas")
RE = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, RunningServer]]:
    root = tmp_path_factory.mktemp("caps")
    started: dict[str, RunningServer] = {}
    try:
        for service in SERVICES:
            module = importlib.import_module(f"{service}_svc.servicer")
            started[service] = start_service(service, module.build, make_settings(root), port=0)
        yield started
    finally:
        for server in started.values():
            server.stop(0)


@pytest.fixture(autouse=True)
def _default_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caps are read from the environment per request: the defaults here."""
    import os

    for name in list(os.environ):
        if name.startswith("BITMESH_MAX_"):
            monkeypatch.delenv(name)


# -- requests ---------------------------------------------------------------


def _resnet(shape: list[int], classes: int = 0) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(architecture="resnet18", input_shape=shape, num_classes=classes)


def _synthetic(shape: list[int], classes: int = 10, batch_size: int = 0) -> common_pb2.DatasetRef:
    return common_pb2.DatasetRef(
        kind=common_pb2.DATASET_KIND_SYNTHETIC,
        shape=shape,
        num_classes=classes,
        batch_size=batch_size,
    )


DIGITS_MODEL = common_pb2.ModelRef(architecture="digits_cnn")
DIGITS = common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS)
INT8 = common_pb2.QuantOption(
    weight=common_pb2.NumericFormat(name="int8"), activation=common_pb2.NumericFormat(name="int8")
)


def _analysis(
    model: common_pb2.ModelRef, dataset: common_pb2.DatasetRef, batches: int = 0
) -> sensitivity_pb2.StartAnalysisRequest:
    return sensitivity_pb2.StartAnalysisRequest(
        model=model,
        dataset=dataset,
        options=[INT8],
        settings=sensitivity_pb2.EstimatorSettings(num_batches=batches),
    )


def _training(
    model: common_pb2.ModelRef, dataset: common_pb2.DatasetRef, batch_size: int = 0
) -> trainer_pb2.StartTrainingRequest:
    request = trainer_pb2.StartTrainingRequest(
        model=model, dataset=dataset, training=trainer_pb2.TrainingSettings(batch_size=batch_size)
    )
    request.calibration.SetInParent()
    return request


def _calibration(
    model: common_pb2.ModelRef, dataset: common_pb2.DatasetRef, batches: int
) -> trainer_pb2.StartTrainingRequest:
    request = _training(model, dataset)
    request.calibration.calibration_batches = batches
    request.calibration.default_option.CopyFrom(INT8)
    return request


def _search(
    model: common_pb2.ModelRef, dataset: common_pb2.DatasetRef, batch_size: int = 0
) -> proxy_nas_pb2.StartSearchRequest:
    return proxy_nas_pb2.StartSearchRequest(
        model=model,
        dataset=dataset,
        default_option=INT8,
        space=[
            proxy_nas_pb2.Hyperparameter(
                name="learning_rate",
                categorical=proxy_nas_pb2.Categorical(choices=["0.02", "0.2"]),
            )
        ],
        trials=2,
        fidelity=[proxy_nas_pb2.Rung(data_fraction=1.0, steps=1)],
        batch_size=batch_size,
    )


Call = Callable[[grpc.Channel], Any]


def _list_layers(request: sensitivity_pb2.ListLayersRequest) -> Call:
    return lambda ch: sensitivity_pb2_grpc.SensitivityServiceStub(ch).ListLayers(
        request, timeout=DEADLINE_S
    )


def _start_analysis(request: sensitivity_pb2.StartAnalysisRequest) -> Call:
    return lambda ch: sensitivity_pb2_grpc.SensitivityServiceStub(ch).StartAnalysis(
        request, timeout=DEADLINE_S
    )


def _start_job(request: trainer_pb2.StartTrainingRequest) -> Call:
    return lambda ch: trainer_pb2_grpc.TrainerServiceStub(ch).StartJob(request, timeout=DEADLINE_S)


def _start_search(request: proxy_nas_pb2.StartSearchRequest) -> Call:
    return lambda ch: proxy_nas_pb2_grpc.ProxyNasServiceStub(ch).StartSearch(
        request, timeout=DEADLINE_S
    )


# id -> (service, call, status, what the message must say)
CASES: dict[str, tuple[ServiceName, Call, grpc.StatusCode, str]] = {
    # The measured ones.
    "list-layers-resnet18-8192px": (
        "sensitivity",
        _list_layers(sensitivity_pb2.ListLayersRequest(model=_resnet([3, 8192, 8192]))),
        RE,
        "BITMESH_MAX_INPUT_ELEMENTS",
    ),
    "list-layers-int32-max-classes": (
        "sensitivity",
        _list_layers(
            sensitivity_pb2.ListLayersRequest(model=_resnet([3, 32, 32], classes=INT32_MAX))
        ),
        RE,
        "BITMESH_MAX_NUM_CLASSES",
    ),
    "analysis-resnet18-4096px": (
        "sensitivity",
        _start_analysis(_analysis(_resnet([3, 4096, 4096]), _synthetic([3, 4096, 4096]))),
        RE,
        "BITMESH_MAX_INPUT_ELEMENTS",
    ),
    "analysis-synthetic-512px-3000-classes": (
        "sensitivity",
        _start_analysis(
            _analysis(_resnet([3, 512, 512], 3000), _synthetic([3, 512, 512], classes=3000))
        ),
        RE,
        "BITMESH_MAX_DATA_ELEMENTS",
    ),
    # Each cap of the sensitivity service.
    "analysis-batch-size": (
        "sensitivity",
        _start_analysis(
            _analysis(DIGITS_MODEL, common_pb2.DatasetRef(kind=DIGITS.kind, batch_size=5000))
        ),
        RE,
        "BITMESH_MAX_BATCH_SIZE",
    ),
    "analysis-batch-count": (
        "sensitivity",
        _start_analysis(_analysis(DIGITS_MODEL, DIGITS, batches=65)),
        RE,
        "BITMESH_MAX_BATCHES",
    ),
    "analysis-batches-kept": (
        "sensitivity",
        # 64 x 4096 samples of 3x32x32: 805 M elements (3 GiB) kept at once.
        _start_analysis(
            _analysis(_resnet([3, 32, 32]), _synthetic([3, 32, 32], batch_size=4096), 64)
        ),
        RE,
        "BITMESH_MAX_DATA_ELEMENTS",
    ),
    "analysis-dataset-classes": (
        "sensitivity",
        _start_analysis(_analysis(_resnet([3, 32, 32]), _synthetic([3, 32, 32], INT32_MAX))),
        RE,
        "BITMESH_MAX_NUM_CLASSES",
    ),
    "list-layers-absurd-dim": (
        "sensitivity",
        _list_layers(sensitivity_pb2.ListLayersRequest(model=_resnet([3, 2**40, 1]))),
        INVALID,
        "input_shape",
    ),
    "list-layers-zero-dim": (
        "sensitivity",
        _list_layers(sensitivity_pb2.ListLayersRequest(model=_resnet([3, 0, 224]))),
        INVALID,
        "input_shape",
    ),
    "analysis-negative-batches": (
        "sensitivity",
        _start_analysis(_analysis(DIGITS_MODEL, DIGITS, batches=-1)),
        INVALID,
        "num_batches",
    ),
    # The trainer's StartJob.
    "calibration-batch-count": (
        "trainer",
        _start_job(_calibration(DIGITS_MODEL, DIGITS, batches=10_001)),
        RE,
        "BITMESH_MAX_CALIBRATION_BATCHES",
    ),
    "train-resnet18-4096px": (
        "trainer",
        _start_job(_training(_resnet([3, 4096, 4096]), _synthetic([3, 4096, 4096]))),
        RE,
        "BITMESH_MAX_INPUT_ELEMENTS",
    ),
    "train-int32-max-classes": (
        "trainer",
        _start_job(_training(_resnet([3, 32, 32], INT32_MAX), _synthetic([3, 32, 32]))),
        RE,
        "BITMESH_MAX_NUM_CLASSES",
    ),
    "train-synthetic-512px-3000-classes": (
        "trainer",
        _start_job(_training(_resnet([3, 512, 512], 3000), _synthetic([3, 512, 512], 3000))),
        RE,
        "BITMESH_MAX_DATA_ELEMENTS",
    ),
    "train-batch-size": (
        "trainer",
        _start_job(_training(DIGITS_MODEL, DIGITS, batch_size=5000)),
        RE,
        "BITMESH_MAX_BATCH_SIZE",
    ),
    "train-one-batch": (
        "trainer",
        # 4096 samples of 3x256x256: 805 M elements in one batch.
        _start_job(_training(_resnet([3, 256, 256]), _synthetic([3, 256, 256]), 4096)),
        RE,
        "BITMESH_MAX_DATA_ELEMENTS",
    ),
    # The proxy NAS's StartSearch.
    "search-resnet18-4096px": (
        "proxy_nas",
        _start_search(_search(_resnet([3, 4096, 4096]), _synthetic([3, 32, 32]))),
        RE,
        "BITMESH_MAX_INPUT_ELEMENTS",
    ),
    "search-dataset-8192px": (
        "proxy_nas",
        _start_search(_search(_resnet([3, 32, 32]), _synthetic([3, 8192, 8192]))),
        RE,
        "BITMESH_MAX_INPUT_ELEMENTS",
    ),
    "search-int32-max-classes": (
        "proxy_nas",
        _start_search(_search(_resnet([3, 32, 32], INT32_MAX), _synthetic([3, 32, 32]))),
        RE,
        "BITMESH_MAX_NUM_CLASSES",
    ),
    "search-batch-size": (
        "proxy_nas",
        _start_search(_search(DIGITS_MODEL, DIGITS, batch_size=5000)),
        RE,
        "BITMESH_MAX_BATCH_SIZE",
    ),
    "search-one-batch": (
        "proxy_nas",
        _start_search(_search(_resnet([3, 256, 256]), _synthetic([3, 256, 256]), 4096)),
        RE,
        "BITMESH_MAX_DATA_ELEMENTS",
    ),
}


def _refusal(server: RunningServer, call: Call) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            call(channel)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=DEADLINE_S
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    return error


@pytest.mark.parametrize("case", sorted(CASES))
def test_over_a_cap_is_refused_at_once_and_the_service_stays_up(
    servers: dict[str, RunningServer], case: str
) -> None:
    service, call, status, named = CASES[case]
    error = _refusal(servers[service], call)
    details = error.details() or ""
    assert error.code() is status, f"{error.code().name}: {details}"
    assert named in details, details
    for setting in re.findall(r"BITMESH_[A-Z_]+", details):
        # The named knob is a real setting the operator can turn.
        assert setting.removeprefix("BITMESH_").lower() in Settings.model_fields, setting
    if status is RE:
        assert re.search(r"the cap is [\d,]+", details), details


def test_a_cap_is_the_setting_of_the_environment(
    servers: dict[str, RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lowered through BITMESH_MAX_BATCHES, two batches are over it (a request
    the default cap of 64 admits)."""
    monkeypatch.setenv("BITMESH_MAX_BATCHES", "1")
    error = _refusal(servers["sensitivity"], _start_analysis(_analysis(DIGITS_MODEL, DIGITS, 2)))
    assert error.code() is RE
    assert "num_batches is 2; the cap is 1 batches (BITMESH_MAX_BATCHES)" in (error.details() or "")
