"""Bearer-token authentication, one interceptor shared by every service.

Callers send ``authorization: Bearer <token>`` metadata (``bitmesh.Client``
does when ``BITMESH_AUTH_TOKEN`` is set). A call without it, or with another
token, ends with UNAUTHENTICATED before any servicer code runs.

Exempt: the standard health service (``grpc.health.v1.Health``), because
Kubernetes' gRPC probes cannot send metadata and a health answer reveals
nothing. Server reflection is *not* exempt: it lists every method and message
of the API, which is for authenticated operators (``grpcurl -H
'authorization: Bearer ...'`` works).

Off when no token is configured (the embedded loopback default); on in the
Kubernetes manifests, where the tokens come from Secrets. Tokens are compared
in constant time and never logged.

Tenants (:mod:`bitmesh.tenants`): each accepted token belongs to a tenant
(``BITMESH_AUTH_TOKEN`` to ``default``, ``BITMESH_TOKEN_FILE``'s lines to
theirs), and that tenant is current for the whole call, in the thread that
serves it: the check itself runs on gRPC's polling thread (so a refused
request is never deserialized), and the accepted call's handler is wrapped to
set the tenant where the servicer runs (:mod:`bitmesh.rpc.handlers` says why
a context variable cannot be set on the polling thread).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc

from bitmesh.rpc.handlers import WrappedHandlers, wrap_handler
from bitmesh.settings import Settings
from bitmesh.tenants import DEFAULT_TENANT, TokenTable, tenant_scope, token_table

log = logging.getLogger(__name__)

AUTH_METADATA_KEY = "authorization"
HEALTH_METHODS: frozenset[str] = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)

MISSING_TOKEN = (
    "missing bearer token: send metadata 'authorization: Bearer <token>' "
    "(set BITMESH_AUTH_TOKEN for the bitmesh client)"
)
WRONG_TOKEN = (
    "invalid bearer token: the token is not one of this mesh's (BITMESH_AUTH_TOKEN or a "
    "tenant's line in BITMESH_TOKEN_FILE)"
)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization: Bearer ...`` entry, if any."""
    for key, value in metadata or ():
        if key != AUTH_METADATA_KEY:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def check_token(metadata: Sequence[tuple[str, str | bytes]] | None, expected: str) -> str | None:
    """None when the call carries ``expected``; else the reason it is refused."""
    sent = bearer_token(metadata)
    if sent is None:
        return MISSING_TOKEN
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        return WRONG_TOKEN
    return None


def caller_of(
    metadata: Sequence[tuple[str, str | bytes]] | None, tokens: TokenTable
) -> tuple[str | None, str]:
    """(tenant, token) of a call whose token is in ``tokens``; else (None, reason)."""
    sent = bearer_token(metadata)
    if sent is None:
        return None, MISSING_TOKEN
    tenant = tokens.tenant_of(sent)
    if tenant is None:
        return None, WRONG_TOKEN
    return tenant, sent


def _refusal(method: str, reason: str, streaming_response: bool) -> grpc.RpcMethodHandler:
    """A handler that refuses the call (logged inside the call's request id)."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("refused %s from %s: %s", method, context.peer(), reason.split(":")[0])
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Any:
        refuse(request, context)
        yield  # pragma: no cover - abort raised above

    # Raw bytes in and out: the refused request is never deserialized.
    if streaming_response:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call that lacks one of the mesh's tokens, except
    ``exempt`` methods; an accepted call runs as its token's tenant."""

    def __init__(self, tokens: str | TokenTable, exempt: Collection[str] = HEALTH_METHODS) -> None:
        if isinstance(tokens, str):
            tokens = TokenTable(((DEFAULT_TENANT, tokens.encode()),) if tokens else ())
        if not tokens or any(not token for _, token in tokens.entries):
            raise ValueError("an empty token would let every caller in")
        self._tokens = tokens
        # For calls already accepted only (see _caller_scope).
        self._tenant_by_token = {token.decode(): tenant for tenant, token in tokens.entries}
        self._exempt = frozenset(exempt)
        self._as_caller = WrappedHandlers(lambda _m, h: wrap_handler(h, self._caller_scope))

    @contextmanager
    def _caller_scope(self, context: grpc.ServicerContext) -> Iterator[str]:
        """The caller's tenant, current in the serving thread for the whole call.

        The token was accepted on the polling thread, in constant time; here,
        where one wrapped handler serves every call of a method, its tenant is
        read back from a dict, whose timing can tell a caller nothing: only a
        call whose token is already accepted gets here."""
        token = bearer_token(context.invocation_metadata())
        tenant = self._tenant_by_token.get(token or "")
        if token is None or tenant is None:  # cannot happen: the metadata was accepted
            context.abort(grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN)
        with tenant_scope(tenant or DEFAULT_TENANT, token) as scoped:
            yield scoped

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method in self._exempt:
            return continuation(handler_call_details)
        tenant, reason = caller_of(handler_call_details.invocation_metadata, self._tokens)  # type: ignore[attr-defined]
        if tenant is not None:
            accepted = continuation(handler_call_details)
            return None if accepted is None else self._as_caller.get(method, accepted)
        # Refuse with the shape of the real method so the client sees a clean
        # status (an unknown method is refused too: no probing without a token).
        handler = continuation(handler_call_details)
        streaming = handler is not None and handler.response_streaming
        return _refusal(method, reason, streaming)


def settings_tokens(settings: Settings) -> TokenTable:
    """Every token ``settings`` accept (raises TokenFileError for a bad file)."""
    return token_table(settings.auth_token, settings.token_file)


def auth_configured(settings: Settings) -> bool:
    """Whether callers must authenticate: the settings name at least one token.

    A token file with no lines and no shared token counts as none, so a
    non-loopback service refuses to start on it rather than serve nobody (or,
    worse, be read as "no auth"). Raises TokenFileError for a bad file."""
    return bool(settings_tokens(settings))


def auth_interceptor(settings: Settings) -> BearerTokenInterceptor | None:
    """The interceptor for ``settings`` (None when no token is configured)."""
    tokens = settings_tokens(settings)
    if not tokens:
        return None
    return BearerTokenInterceptor(tokens)


def as_caller(settings: Settings) -> Settings:
    """``settings`` for a call to a peer made on the current caller's behalf:
    the caller's own token, so the peer serves the same tenant (a token-file
    tenant's calls would otherwise reach the peer as ``default``, or with no
    token at all). Unchanged outside an authenticated call."""
    from bitmesh.tenants import caller_token

    token = caller_token()
    if token is None:
        return settings
    return settings.model_copy(update={"auth_token": token})
