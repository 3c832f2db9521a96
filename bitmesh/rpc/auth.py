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
Kubernetes manifests, where the token comes from a Secret. Tokens are compared
in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc

from bitmesh.settings import Settings

log = logging.getLogger(__name__)

AUTH_METADATA_KEY = "authorization"
HEALTH_METHODS: frozenset[str] = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)

MISSING_TOKEN = (
    "missing bearer token: send metadata 'authorization: Bearer <token>' "
    "(set BITMESH_AUTH_TOKEN for the bitmesh client)"
)
WRONG_TOKEN = "invalid bearer token: the token does not match this mesh's BITMESH_AUTH_TOKEN"


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
    """Refuses every call that lacks the mesh's token, except ``exempt`` methods."""

    def __init__(self, token: str, exempt: Collection[str] = HEALTH_METHODS) -> None:
        if not token:
            raise ValueError("an empty token would let every caller in")
        self._token = token
        self._exempt = frozenset(exempt)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method in self._exempt:
            return continuation(handler_call_details)
        reason = check_token(handler_call_details.invocation_metadata, self._token)  # type: ignore[attr-defined]
        if reason is None:
            return continuation(handler_call_details)
        # Refuse with the shape of the real method so the client sees a clean
        # status (an unknown method is refused too: no probing without a token).
        handler = continuation(handler_call_details)
        streaming = handler is not None and handler.response_streaming
        return _refusal(method, reason, streaming)


def auth_interceptor(settings: Settings) -> BearerTokenInterceptor | None:
    """The interceptor for ``settings`` (None when no token is configured)."""
    if not settings.auth_token:
        return None
    return BearerTokenInterceptor(settings.auth_token)
