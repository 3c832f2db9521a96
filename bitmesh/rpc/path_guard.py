"""Keep file paths that callers send inside the artifact root.

Requests name files (a model's ``torchscript``/``exported_program``/
``weights``, an image-folder dataset's ``path``, a budget's
``latency_profile`` when it is a path rather than a profile name). A service that other
machines can reach must not read whatever the caller names (``/etc/...``,
``../../``, a symlink out of the root), so before the servicer sees the
request every such field is checked and rewritten to the real path inside the
root: relative paths are uploads (``<root>/uploads/...``, through
:meth:`ArtifactStore.resolve_user_path`), absolute ones must already lie in
the root once symlinks are resolved. Anything else ends with INVALID_ARGUMENT
before servicer code runs.

Tenants (:mod:`bitmesh.tenants`): the caller's files are only those of its
own namespace, ``<root>/tenants/<name>/`` (the root minus ``tenants/`` for
the tenant ``default``). Relative paths are its own uploads; an absolute path
into another tenant's namespace is NOT_FOUND with a message that depends only
on the text sent, never on whether anything is there, so a caller learns
nothing about another tenant's files. The check is on the path as written
(before symlinks, whose targets would tell) and again on the real path (so a
link in one's own uploads leads nowhere else).

Confining when the service is reachable from elsewhere (a non-loopback host,
or a token configured); the embedded loopback mesh reads the user's own files
wherever they are, which is the point of running it locally. Everywhere, a
malformed path (a NUL byte, longer than any file system takes) ends with
INVALID_ARGUMENT: this interceptor runs outside the error interceptor, so it
maps its own errors to statuses rather than letting ``os`` raise ValueError
into gRPC, which the caller saw as UNKNOWN.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import BitmeshError, InvalidArgument, NotFound
from bitmesh.rpc.auth import auth_configured
from bitmesh.rpc.errors import abort_for, status_code_of
from bitmesh.rpc.handlers import WrappingInterceptor
from bitmesh.settings import Settings
from bitmesh.tenants import DEFAULT_TENANT, TENANTS_FOLDER, current_tenant, namespace_of

# Message full name -> its string fields that hold a file path.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "bitmesh.v1.ModelRef": ("exported_program", "torchscript", "weights"),
    "bitmesh.v1.DatasetRef": ("path",),
    "bitmesh.v1.Budgets": ("latency_profile",),
}
# Of those, the fields that take a *name* too: a value with no directory part
# and no suffix (``nvidia-t4``) names a file the service looks up in its own
# folder (``solver_svc/profiles/``), so it is left as it is; anything else is
# a path and confined like the others.
NAME_OR_PATH_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {("bitmesh.v1.Budgets", "latency_profile")}
)
#: Longer is no path a service should open (Linux's PATH_MAX is 4096 bytes).
MAX_PATH_BYTES = 4096


def check_path_text(user_path: str) -> None:
    """Refuse a path no file system could hold, before anything touches it.

    ``os`` raises ValueError on a NUL byte; outside the error interceptor
    that reached the caller as UNKNOWN, so it is refused here with a message.
    """
    if "\x00" in user_path:
        shown = user_path if len(user_path) <= 200 else user_path[:200] + "..."
        raise InvalidArgument(
            f"path {shown!r} holds a NUL byte; send the file's path as plain text"
        )
    if len(user_path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument(
            f"path of {len(user_path)} characters is longer than {MAX_PATH_BYTES} bytes; "
            "give a shorter path"
        )


def _local_root(artifact_root: str) -> Path | None:
    if "://" in artifact_root and not artifact_root.startswith("file://"):
        return None
    return Path(artifact_root.removeprefix("file://")).resolve()


def not_in_namespace(user_path: str, tenant: str) -> NotFound:
    """The one answer to a path in someone else's namespace: built from the
    text sent and the caller's own tenant only, so it is the same whether
    or not anything lies there."""
    return NotFound(
        f"no file {user_path!r} in the files of tenant {tenant!r}; upload it and give its path "
        "relative to your uploads/ folder"
    )


def _in_namespace(path: Path, root: Path, tenant: str) -> bool:
    """Whether ``path`` (inside ``root``) lies in ``tenant``'s namespace."""
    if tenant == DEFAULT_TENANT:
        return not path.is_relative_to(root / TENANTS_FOLDER)
    return path.is_relative_to(Path(namespace_of(str(root), tenant)))


def confine_path(artifact_root: str, user_path: str, tenant: str = DEFAULT_TENANT) -> str:
    """The real local path ``user_path`` names inside ``tenant``'s namespace of
    the root; refuses escapes (INVALID_ARGUMENT) and other tenants' files
    (NOT_FOUND, :func:`not_in_namespace`)."""
    check_path_text(user_path)
    root = _local_root(artifact_root)
    if root is None:
        raise InvalidArgument(
            f"file path {user_path!r} cannot be read: the artifact root {artifact_root!r} is "
            "not a local folder; upload the file to the shared artifact volume instead"
        )
    namespace = Path(namespace_of(str(root), tenant))
    try:
        if Path(user_path).is_absolute():
            candidate = Path(user_path)
            # As written, before any symlink is followed: where a link in
            # another tenant's folder leads must not change the answer.
            written = Path(os.path.normpath(user_path))
            if written.is_relative_to(root) and not _in_namespace(written, root, tenant):
                raise not_in_namespace(user_path, tenant)
        else:
            candidate = Path(ArtifactStore(str(namespace)).resolve_user_path(user_path))
        real = candidate.resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise InvalidArgument(
            f"path {user_path!r} is malformed ({type(exc).__name__}: {str(exc)[:120]}); "
            "give a path relative to the root's uploads/ folder"
        ) from None
    if not real.is_relative_to(root):
        raise InvalidArgument(
            f"path {user_path!r} escapes the artifact root {str(root)!r}; upload the file "
            "and give its path relative to the root's uploads/ folder"
        )
    if not _in_namespace(real, root, tenant):
        raise not_in_namespace(user_path, tenant)
    return str(real)


def _is_name(message_name: str, field: str, text: str) -> bool:
    if (message_name, field) not in NAME_OR_PATH_FIELDS:
        return False
    return "/" not in text and "\\" not in text and not Path(text).suffix


def confine_request_paths(
    message: Message, artifact_root: str | None, tenant: str | None = None
) -> None:
    """Check and rewrite, in place, every path field anywhere in ``message``.

    ``artifact_root`` None only checks that each path is well formed (the
    loopback mesh reads the user's own files wherever they are). ``tenant``
    defaults to the caller's (:func:`bitmesh.tenants.current_tenant`).
    """
    tenant = tenant or current_tenant()
    for field, value in message.ListFields():
        if field.message_type is not None and path_bearing(field.message_type):
            for item in _messages(field, value):
                confine_request_paths(item, artifact_root, tenant)
    full_name = message.DESCRIPTOR.full_name
    for name in PATH_FIELDS.get(full_name, ()):
        text = getattr(message, name)
        if not text or _is_name(full_name, name, text):
            continue
        if artifact_root is None:
            check_path_text(text)
        else:
            setattr(message, name, confine_path(artifact_root, text, tenant))


def _messages(field: FieldDescriptor, value: Any) -> Iterable[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return [v for v in value.values() if isinstance(v, Message)]
    return value if _is_repeated(field) else [value]


@functools.cache
def path_bearing(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a path field at any depth.

    Walking every field of every request cost a Python call per sub-message
    (a solver problem has tens of thousands); only types that can reach a
    path field are walked.
    """
    return _reaches_paths(descriptor, set())


def _reaches_paths(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in PATH_FIELDS:
        return True
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        inner = field.message_type
        if inner is not None and inner.full_name not in seen and _reaches_paths(inner, seen):
            return True
    return False


def _is_repeated(field: Any) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6: `label` is deprecated
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _guarded(
    method: str, behaviour: Callable[..., Any], root: str | None, streaming: bool
) -> Callable[..., Any]:
    def check(request: Any, context: grpc.ServicerContext) -> None:
        if not (isinstance(request, Message) and path_bearing(request.DESCRIPTOR)):
            return
        # This runs outside the error interceptor (which wraps the servicer
        # beneath), so it maps its own errors: a status for each, never UNKNOWN.
        try:
            confine_request_paths(request, root)
        except BitmeshError as exc:
            context.abort(status_code_of(exc), exc.message)
        except Exception as exc:
            abort_for(context, method, exc)

    if streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            yield from behaviour(request, context)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        check(request, context)
        return behaviour(request, context)

    return unary


class PathGuardInterceptor(WrappingInterceptor):
    """Checks the path fields of unary requests; confines them to
    ``artifact_root`` unless it is None (then only malformed paths are refused)."""

    def __init__(self, artifact_root: str | None) -> None:
        self.artifact_root = artifact_root
        super().__init__(self._wrap)

    @property
    def confining(self) -> bool:
        return self.artifact_root is not None

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guarded(method, handler.unary_unary, self.artifact_root, False), **codecs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guarded(method, handler.unary_stream, self.artifact_root, True), **codecs
            )
        return handler


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def path_guard_interceptor(settings: Settings) -> PathGuardInterceptor:
    """Confining for a service others can reach (non-loopback host or a token
    set); checking only, on the loopback mesh."""
    if is_loopback(settings.host) and not auth_configured(settings):
        return PathGuardInterceptor(None)
    return PathGuardInterceptor(settings.artifact_root)
