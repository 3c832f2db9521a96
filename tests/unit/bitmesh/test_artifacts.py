from __future__ import annotations

import pytest

from bitmesh.artifacts import ArtifactStore, cache_key
from bitmesh.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.unit


def test_content_addressed_round_trip(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path))
    first = store.put_bytes(b"hello")
    again = store.put_bytes(b"hello")
    assert first == again
    assert store.get_bytes(first.sha256) == b"hello"
    assert first.uri.startswith("file://")


def test_refs_point_at_json(tmp_path) -> None:
    store = ArtifactStore(str(tmp_path))
    assert store.get_ref("reports", "abc") is None
    store.set_ref("reports", "abc", {"x": [1, 2]})
    assert store.get_ref("reports", "abc") == {"x": [1, 2]}
    store.set_ref("reports", "abc", {"x": 3})
    assert store.get_ref("reports", "abc") == {"x": 3}


def test_missing_blob_is_not_found(tmp_path) -> None:
    with pytest.raises(NotFound):
        ArtifactStore(str(tmp_path)).get_bytes("0" * 64)


ESCAPES = ["../etc/passwd", "/abs/path", "a/../../b", ""]  # not read here: hostile input


@pytest.mark.parametrize("bad", ESCAPES)
def test_user_paths_cannot_escape_root(tmp_path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ArtifactStore(str(tmp_path)).resolve_user_path(bad)


BAD_REF_NAMES = ["../x", "a/b", ".hidden", ""]  # not read here: hostile input


@pytest.mark.parametrize("bad", BAD_REF_NAMES)
def test_ref_names_are_checked(tmp_path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ArtifactStore(str(tmp_path)).set_ref(bad or "", "k", {})


def test_cache_key_is_stable_and_order_sensitive() -> None:
    assert cache_key({"b": 1, "a": 2}, 3) == cache_key({"a": 2, "b": 1}, 3)
    assert cache_key(1, 2) != cache_key(2, 1)
