"""Keep file paths that callers send inside the artifact root.

Requests name files (a model's ``torchscript``/``exported_program``/
``weights``, an image-folder dataset's ``path``). A service that other
machines can reach must not read whatever the caller names (``/etc/...``,
``../../``, a symlink out of the root), so before the servicer sees the
request every such field is checked and rewritten to the real path inside the
root: relative paths are uploads (``<root>/uploads/...``, through
:meth:`ArtifactStore.resolve_user_path`), absolute ones must already lie in
the root once symlinks are resolved. Anything else ends with INVALID_ARGUMENT
before servicer code runs.

On when the service is reachable from elsewhere (a non-loopback host, or a
token configured); the embedded loopback mesh reads the user's own files
wherever they are, which is the point of running it locally.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import InvalidArgument
from bitmesh.settings import Settings

# Message full name -> its string fields that hold a file path.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "bitmesh.v1.ModelRef": ("exported_program", "torchscript", "weights"),
    "bitmesh.v1.DatasetRef": ("path",),
}


def _local_root(artifact_root: str) -> Path | None:
    if "://" in artifact_root and not artifact_root.startswith("file://"):
        return None
    return Path(artifact_root.removeprefix("file://")).resolve()


def confine_path(artifact_root: str, user_path: str) -> str:
    """The real local path ``user_path`` names inside the root; refuses escapes."""
    root = _local_root(artifact_root)
    if root is None:
        raise InvalidArgument(
            f"file path {user_path!r} cannot be read: the artifact root {artifact_root!r} is "
            "not a local folder; upload the file to the shared artifact volume instead"
        )
    if Path(user_path).is_absolute():
        candidate = Path(user_path)
    else:
        candidate = Path(ArtifactStore(str(root)).resolve_user_path(user_path))
    real = candidate.resolve()
    if not real.is_relative_to(root):
        raise InvalidArgument(
            f"path {user_path!r} escapes the artifact root {str(root)!r}; upload the file "
            "and give its path relative to the root's uploads/ folder"
        )
    return str(real)


def confine_request_paths(message: Message, artifact_root: str) -> None:
    """Check and rewrite, in place, every path field anywhere in ``message``."""
    for field, value in message.ListFields():
        if field.message_type is not None:
            items = value if _is_repeated(field) else [value]
            for item in items:
                if isinstance(item, Message):
                    confine_request_paths(item, artifact_root)
    for name in PATH_FIELDS.get(message.DESCRIPTOR.full_name, ()):
        text = getattr(message, name)
        if text:
            setattr(message, name, confine_path(artifact_root, text))


def _is_repeated(field: Any) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6: `label` is deprecated
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _guarded(behaviour: Callable[..., Any], root: str, streaming: bool) -> Callable[..., Any]:
    def check(request: Any, context: grpc.ServicerContext) -> None:
        if isinstance(request, Message):
            try:
                confine_request_paths(request, root)
            except InvalidArgument as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)

    if streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            yield from behaviour(request, context)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        check(request, context)
        return behaviour(request, context)

    return unary


class PathGuardInterceptor(grpc.ServerInterceptor):
    """Confines the path fields of unary requests to ``artifact_root``."""

    def __init__(self, artifact_root: str) -> None:
        self.artifact_root = artifact_root

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guarded(handler.unary_unary, self.artifact_root, False), **codecs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guarded(handler.unary_stream, self.artifact_root, True), **codecs
            )
        return handler


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def path_guard_interceptor(settings: Settings) -> PathGuardInterceptor | None:
    """On for a service others can reach (non-loopback host or a token set)."""
    if is_loopback(settings.host) and not settings.auth_token:
        return None
    return PathGuardInterceptor(settings.artifact_root)
