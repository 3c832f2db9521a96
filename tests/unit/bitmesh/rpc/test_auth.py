"""Bearer-token checks (pure parts of bitmesh.rpc.auth)."""

from __future__ import annotations

import pytest

from bitmesh.rpc.auth import (
    HEALTH_METHODS,
    MISSING_TOKEN,
    WRONG_TOKEN,
    BearerTokenInterceptor,
    auth_interceptor,
    bearer_token,
    check_token,
)
from bitmesh.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("x-other", "1"), ("authorization", b"Bearer abc")), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", "abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_token(metadata: object, expected: str | None) -> None:
    assert bearer_token(metadata) == expected  # type: ignore[arg-type]


def test_check_token_reasons() -> None:
    assert check_token((("authorization", "Bearer t0k"),), "t0k") is None
    assert check_token((("authorization", "Bearer t0K"),), "t0k") == WRONG_TOKEN
    assert check_token((("authorization", "Bearer t0k0"),), "t0k") == WRONG_TOKEN
    assert check_token((), "t0k") == MISSING_TOKEN


def test_off_without_a_token_and_never_empty() -> None:
    assert auth_interceptor(Settings(auth_token=None)) is None
    assert auth_interceptor(Settings(auth_token="")) is None
    assert isinstance(auth_interceptor(Settings(auth_token="x")), BearerTokenInterceptor)
    with pytest.raises(ValueError, match="empty token"):
        BearerTokenInterceptor("")


def test_only_health_is_exempt() -> None:
    assert all(m.startswith("/grpc.health.v1.Health/") for m in HEALTH_METHODS)
    assert not any("Reflection" in m for m in HEALTH_METHODS)


def test_each_token_names_its_tenant() -> None:
    from bitmesh.rpc.auth import caller_of
    from bitmesh.tenants import TokenTable

    tokens = TokenTable((("default", b"common-token"), ("alice", b"alice-token-0123456789")))
    assert caller_of((("authorization", "Bearer common-token"),), tokens) == (
        "default",
        "common-token",
    )
    assert caller_of((("authorization", "Bearer alice-token-0123456789"),), tokens)[0] == "alice"
    assert caller_of((("authorization", "Bearer alice-token"),), tokens) == (None, WRONG_TOKEN)
    assert caller_of((), tokens) == (None, MISSING_TOKEN)
    with pytest.raises(ValueError, match="empty token"):
        BearerTokenInterceptor(TokenTable())


def test_a_peer_call_carries_the_callers_token() -> None:
    from bitmesh.rpc.auth import as_caller
    from bitmesh.tenants import tenant_scope

    settings = Settings(auth_token="common-token")
    assert as_caller(settings) is settings
    with tenant_scope("alice", "alice-token-0123456789"):
        assert as_caller(settings).auth_token == "alice-token-0123456789"
    assert settings.auth_token == "common-token"


def test_a_token_file_turns_auth_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bitmesh.rpc.auth import auth_configured

    tokens = tmp_path / "tokens"
    tokens.write_text("alice: alice-token-0123456789\n")
    assert isinstance(auth_interceptor(Settings(token_file=str(tokens))), BearerTokenInterceptor)
    tokens.write_text("# nobody yet\n")
    assert not auth_configured(Settings(token_file=str(tokens)))
