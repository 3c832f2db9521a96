"""Path confinement of request fields (bitmesh.rpc.path_guard)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitmesh.errors import InvalidArgument
from bitmesh.rpc.path_guard import (
    MAX_PATH_BYTES,
    PATH_FIELDS,
    confine_path,
    confine_request_paths,
    is_loopback,
    path_bearing,
    path_guard_interceptor,
)
from bitmesh.settings import Settings
from bitmesh.v1 import common_pb2, proxy_nas_pb2, sensitivity_pb2, solver_pb2

pytestmark = pytest.mark.unit


def test_relative_paths_are_uploads(tmp_path: Path) -> None:
    assert confine_path(str(tmp_path), "models/a.pt") == str(
        tmp_path.resolve() / "uploads" / "models" / "a.pt"
    )
    assert confine_path(f"file://{tmp_path}", "a.pt").startswith(str(tmp_path.resolve()))


def test_absolute_paths_inside_the_root_pass(tmp_path: Path) -> None:
    inside = tmp_path / "cas" / "ab" / "blob"
    assert confine_path(str(tmp_path), str(inside)) == str(inside.resolve())


ESCAPES = ["../x", "a/../../x", "/etc/passwd", "..", "a/./../.."]  # not read here: hostile input


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(InvalidArgument, match="escapes the artifact root"):
        confine_path(str(tmp_path / "root"), path)


def test_symlinks_out_of_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "uploads").mkdir(parents=True)
    os.symlink(tmp_path, root / "uploads" / "out")
    with pytest.raises(InvalidArgument, match="escapes"):
        confine_path(str(root), "out/secret")
    with pytest.raises(InvalidArgument, match="escapes"):
        confine_path(str(root), str(root / "uploads" / "out" / "secret"))


def test_remote_roots_take_no_local_paths() -> None:
    with pytest.raises(InvalidArgument, match="not a local folder"):
        confine_path("s3://bucket/bitmesh", "model.pt")


def test_nested_request_fields_are_rewritten(tmp_path: Path) -> None:
    request = proxy_nas_pb2.StartSearchRequest(
        model=common_pb2.ModelRef(architecture="resnet18", weights="w.pt"),
        dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_IMAGE_FOLDER, path="imgs"),
    )
    confine_request_paths(request, str(tmp_path))
    uploads = tmp_path.resolve() / "uploads"
    assert request.model.weights == str(uploads / "w.pt")
    assert request.dataset.path == str(uploads / "imgs")
    assert request.model.architecture == "resnet18"  # a name, not a path
    escaping = "../m.pt"  # not read here: hostile input
    bad = sensitivity_pb2.ListLayersRequest(model=common_pb2.ModelRef(torchscript=escaping))
    with pytest.raises(InvalidArgument):
        confine_request_paths(bad, str(tmp_path))


def test_path_fields_exist_in_the_protos() -> None:
    messages = {
        "bitmesh.v1.ModelRef": common_pb2.ModelRef,
        "bitmesh.v1.DatasetRef": common_pb2.DatasetRef,
        "bitmesh.v1.Budgets": common_pb2.Budgets,
    }
    for full_name, fields in PATH_FIELDS.items():
        descriptor = messages[full_name].DESCRIPTOR
        for name in fields:
            assert (
                descriptor.fields_by_name[name].type == descriptor.fields_by_name[name].TYPE_STRING
            )


def test_on_only_when_others_can_reach_the_service(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert not path_guard_interceptor(Settings(host="127.0.0.1", artifact_root=root)).confining
    assert path_guard_interceptor(Settings(host="0.0.0.0", artifact_root=root)).confining
    assert path_guard_interceptor(Settings(auth_token="t", artifact_root=root)).confining
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("10.0.0.1")


MALFORMED = {
    "nul": ("models/a\x00.pt", "NUL byte"),
    "nul-absolute": ("/x\x00/y", "NUL byte"),
    "too-long": ("a/" * (MAX_PATH_BYTES // 2 + 1), f"longer than {MAX_PATH_BYTES} bytes"),
}


@pytest.mark.parametrize("path,match", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_paths_are_invalid_arguments(tmp_path: Path, path: str, match: str) -> None:
    """Before this, ``os`` raised ValueError on the NUL byte, outside the
    error interceptor: the caller saw UNKNOWN."""
    with pytest.raises(InvalidArgument, match=match):
        confine_path(str(tmp_path), path)
    # Checked on the loopback mesh too, which does not confine (root None).
    request = sensitivity_pb2.ListLayersRequest(model=common_pb2.ModelRef(torchscript=path))
    with pytest.raises(InvalidArgument, match=match):
        confine_request_paths(request, None)


def test_latency_profiles_names_stay_names_and_paths_are_confined(tmp_path: Path) -> None:
    frontier = solver_pb2.FrontierRequest(
        constraints=common_pb2.Budgets(latency_profile="nvidia-t4")
    )
    confine_request_paths(frontier, str(tmp_path))
    assert frontier.constraints.latency_profile == "nvidia-t4"  # a shipped profile's name
    request = solver_pb2.SolveRequest(budgets=common_pb2.Budgets(latency_profile="prof.json"))
    confine_request_paths(request, str(tmp_path))
    assert request.budgets.latency_profile == str(tmp_path.resolve() / "uploads" / "prof.json")
    for escaping in ("/etc/passwd.json", "../p.csv", "a/../../p"):  # not read here: hostile input
        bad = solver_pb2.SolveRequest(budgets=common_pb2.Budgets(latency_profile=escaping))
        with pytest.raises(InvalidArgument, match="escapes the artifact root"):
            confine_request_paths(bad, str(tmp_path))


def test_only_messages_that_can_hold_paths_are_walked() -> None:
    """A solver problem (tens of thousands of sub-messages) holds no path."""
    assert not path_bearing(solver_pb2.Problem.DESCRIPTOR)
    assert not path_bearing(solver_pb2.RegisterProblemRequest.DESCRIPTOR)
    assert path_bearing(solver_pb2.SolveRequest.DESCRIPTOR)  # its budgets' latency_profile
    assert path_bearing(sensitivity_pb2.StartAnalysisRequest.DESCRIPTOR)


def test_every_request_field_that_names_a_file_is_guarded() -> None:
    """A new request field called ``*path``, ``*file``, ``*uri``... fails here
    until it is in PATH_FIELDS (or shown to name no file)."""
    import re

    from google.protobuf.descriptor import FieldDescriptor

    from bitmesh.v1 import trainer_pb2

    looks_like_a_file = re.compile(r"path|file|uri|dir|folder|profile|weights|torchscript|program")
    found: set[tuple[str, str]] = set()

    def walk(descriptor: object, seen: set[str]) -> None:
        name = descriptor.full_name  # type: ignore[attr-defined]
        if name in seen:
            return
        seen.add(name)
        for field in descriptor.fields:  # type: ignore[attr-defined]
            if field.message_type is not None:
                walk(field.message_type, seen)
            elif field.type == FieldDescriptor.TYPE_STRING and looks_like_a_file.search(field.name):
                found.add((name, field.name))

    seen: set[str] = set()
    for module in (common_pb2, proxy_nas_pb2, sensitivity_pb2, solver_pb2, trainer_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                walk(method.input_type, seen)
    guarded = {(message, field) for message, fields in PATH_FIELDS.items() for field in fields}
    assert found <= guarded, f"request fields naming files, not guarded: {sorted(found - guarded)}"
    assert guarded <= found, f"guarded fields no request has: {sorted(guarded - found)}"
