"""File paths callers send cannot escape the artifact root (real server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, sensitivity_pb2, sensitivity_pb2_grpc
from sensitivity_svc.servicer import build
from tests.integration.security.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    uploads = root / "uploads"
    uploads.mkdir()
    outside = tmp_path_factory.mktemp("outside")
    (outside / "model.pt").write_bytes(b"not yours")
    os.symlink(outside, uploads / "link")  # a symlink out of the root
    return root


@pytest.fixture(scope="module")
def stub(root: Path) -> Iterator[sensitivity_pb2_grpc.SensitivityServiceStub]:
    # A token makes the service one that others reach: paths are confined.
    running: RunningServer = start_service(
        "sensitivity", build, make_settings(root, auth_token=TOKEN), port=0
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield sensitivity_pb2_grpc.SensitivityServiceStub(channel)
    channel.close()
    running.stop(1)


def _list_layers(stub: sensitivity_pb2_grpc.SensitivityServiceStub, **model: str) -> grpc.RpcError:
    request = sensitivity_pb2.ListLayersRequest(model=common_pb2.ModelRef(**model))
    with pytest.raises(grpc.RpcError) as info:
        stub.ListLayers(request, metadata=AUTH, timeout=60)
    return info.value


@pytest.mark.parametrize(
    "model",
    [
        {"torchscript": "../../etc/passwd"},  # not read here: hostile input
        {"torchscript": "/etc/passwd"},
        {"exported_program": "uploads/../../x.pt2"},  # not read here: hostile input
        {"architecture": "digits_cnn", "weights": "link/model.pt"},
        {"torchscript": "link/model.pt"},
    ],
    ids=["dotdot", "absolute-outside", "dotdot-inside", "weights-symlink", "symlink"],
)
def test_escaping_paths_are_refused(
    stub: sensitivity_pb2_grpc.SensitivityServiceStub, model: dict[str, str]
) -> None:
    error = _list_layers(stub, **model)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "escapes the artifact root" in error.details()


def test_dataset_paths_are_refused_too(stub: sensitivity_pb2_grpc.SensitivityServiceStub) -> None:
    request = sensitivity_pb2.StartAnalysisRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=common_pb2.DatasetRef(
            kind=common_pb2.DATASET_KIND_IMAGE_FOLDER,
            path="../../../home",  # not read here: hostile input
        ),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.StartAnalysis(request, metadata=AUTH, timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "escapes the artifact root" in info.value.details()


def test_paths_inside_the_root_reach_the_service(
    stub: sensitivity_pb2_grpc.SensitivityServiceStub, root: Path
) -> None:
    """An upload path passes the guard, rewritten to its place under the root."""
    error = _list_layers(stub, exported_program="models/missing.pt2")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert str(root.resolve() / "uploads" / "models" / "missing.pt2") in error.details()
