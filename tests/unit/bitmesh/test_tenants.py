"""The token file and the tenant namespaces (bitmesh.tenants), without servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitmesh.tenants import (
    DEFAULT_TENANT,
    TokenFileError,
    current_tenant,
    namespace_of,
    parse_token_file,
    tenant_scope,
    token_table,
)

pytestmark = pytest.mark.unit

A = "a-token-0123456789abcdef"
B = "b-token-0123456789abcdef"


def test_lines_map_tokens_to_tenants() -> None:
    table = parse_token_file(f"# comment\n\nalice: {A}\n  bob :{B}  \nalice: {B[::-1]}\n")
    assert table.tenant_of(A) == "alice"
    assert table.tenant_of(B) == "bob"
    assert table.tenant_of(B[::-1]) == "alice"  # a rotated token beside the old one
    assert table.tenant_of(A + "x") is None
    assert table.tenant_of(A[:-1]) is None
    assert table.tenants == {"alice", "bob"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alice\n", "expected 'tenant: token'"),
        ("alice:\n", "expected 'tenant: token'"),
        (f"Alice: {A}\n", "tenant name 'Alice' is not allowed"),
        (f"a/b: {A}\n", "is not allowed"),
        ("alice: short\n", "at least 16 characters"),
        (f"alice: {A} {B}\n", "no spaces"),
        (f"alice: {A}\nbob: {A}\n", "line 2: tenant 'alice' has this token too"),
    ],
)
def test_an_ambiguous_file_is_refused_with_the_line(text: str, reason: str) -> None:
    with pytest.raises(TokenFileError, match=reason.replace("(", r"\(")):
        parse_token_file(text)


def test_the_shared_token_is_the_default_tenant(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"alice: {A}\n")
    table = token_table("common-token", str(path))
    assert table.tenant_of("common-token") == DEFAULT_TENANT
    assert table.tenant_of(A) == "alice"
    assert not token_table(None, None)
    path.write_text(f"alice: {'s' * 16}\n")
    with pytest.raises(TokenFileError, match="gives BITMESH_AUTH_TOKEN"):
        token_table("s" * 16, str(path))
    with pytest.raises(TokenFileError, match="cannot be read"):
        token_table(None, str(tmp_path / "absent"))


def test_namespaces_and_the_current_tenant() -> None:
    assert namespace_of("/r", DEFAULT_TENANT) == "/r"
    assert namespace_of("s3://b/r/", "alice") == "s3://b/r/tenants/alice"
    assert current_tenant() == DEFAULT_TENANT
    with tenant_scope("alice"):
        assert current_tenant() == "alice"
    assert current_tenant() == DEFAULT_TENANT
