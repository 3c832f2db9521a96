"""The committed stubs in bitmesh/v1 must be what the protos generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitmesh.protogen import PACKAGE_DIR, REPO_ROOT, generate, proto_files

pytestmark = pytest.mark.unit


def test_every_service_has_a_proto() -> None:
    names = {p.stem for p in proto_files()}
    assert {"common", "sensitivity", "solver", "trainer", "proxy_nas"} <= names


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in (REPO_ROOT / PACKAGE_DIR).glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed), "stub files differ: run python -m bitmesh.protogen"
    stale = [name for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale stubs {stale}: run python -m bitmesh.protogen"


def test_enums_start_unspecified() -> None:
    import importlib

    for proto in proto_files():
        module = importlib.import_module(f"bitmesh.v1.{proto.stem}_pb2")
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
