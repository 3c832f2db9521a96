"""A content-addressed artifact store behind a URI.

Blobs live at ``<root>/cas/<sha[:2]>/<sha>`` and are immutable; named
references (``<root>/refs/<namespace>/<key>.json``) point at blobs so results
can be found again by what produced them (model hash, dataset hash, settings).
The root is a local folder by default and any fsspec URL (``s3://bucket/x``)
in a cluster. Keys and namespaces are checked so that no name a user sends
can escape the root.

Deleting is for retention only (``bitmesh gc``, :mod:`bitmesh.gc`): a blob
is immutable while it exists, and only the collector, which knows every
reference, decides that none is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec

from bitmesh.errors import InvalidArgument, NotFound

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Artifact:
    """A stored blob: where it is and what it holds."""

    uri: str
    sha256: str
    size_bytes: int
    media_type: str = "application/octet-stream"


def stable_json(value: Any) -> bytes:
    """Canonical JSON bytes, so equal values hash equally across processes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredBlob:
    """A blob (or an abandoned temporary file) as listed by the store."""

    path: str
    sha256: str | None  # None for a ``*.tmp-*`` file a writer left behind
    mtime: float
    size_bytes: int


@dataclass(frozen=True)
class StoredRef:
    """A named reference and the blob it points at."""

    namespace: str
    key: str
    sha256: str


def _mtime(info: Mapping[str, Any]) -> float:
    """The modification time fsspec reports, whichever key the backend uses."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _check_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"{kind} {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(no path separators, no '..'), at most 200 characters"
        )
    return name


class ArtifactStore:
    """Content-addressed blobs plus named JSON references under one root URI."""

    def __init__(self, root: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.protocol = (
            self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        )
        self.fs.makedirs(self.root, exist_ok=True)

    # -- paths -------------------------------------------------------------
    def _blob_path(self, sha: str) -> str:
        if not _SHA256.match(sha):
            raise InvalidArgument(f"{sha!r} is not a sha256 digest")
        return f"{self.root}/cas/{sha[:2]}/{sha}"

    def _ref_path(self, namespace: str, key: str) -> str:
        return (
            f"{self.root}/refs/{_check_name('namespace', namespace)}/{_check_name('key', key)}.json"
        )

    def uri_of(self, path: str) -> str:
        return f"{self.protocol}://{path}"

    def for_tenant(self, tenant: str) -> ArtifactStore:
        """The store of ``tenant``'s own namespace (:func:`bitmesh.tenants.namespace_of`):
        this one for ``default``, ``<root>/tenants/<name>`` for the others, a
        whole store each (blobs, refs, uploads), so no cache, checkpoint or
        upload is shared between tenants."""
        from bitmesh.tenants import DEFAULT_TENANT, namespace_of

        if tenant == DEFAULT_TENANT:
            return self
        return ArtifactStore(self.uri_of(namespace_of(self.root, tenant)))

    # -- blobs -------------------------------------------------------------
    def put_bytes(
        self, data: bytes | memoryview, media_type: str = "application/octet-stream"
    ) -> Artifact:
        """Store ``data`` (bytes, or a byte view such as a BytesIO's buffer)
        once; storing the same bytes again is a no-op."""
        sha = sha256_hex(data)
        path = self._blob_path(sha)
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)
        else:
            self._refresh(path)
        return Artifact(
            uri=self.uri_of(path), sha256=sha, size_bytes=len(data), media_type=media_type
        )

    def put_json(self, value: Any) -> Artifact:
        return self.put_bytes(stable_json(value), media_type="application/json")

    def get_bytes(self, sha: str) -> bytes:
        path = self._blob_path(sha)
        if not self.fs.exists(path):
            raise NotFound(f"artifact {sha} is not in the store at {self.root}")
        with self.fs.open(path, "rb") as fh:
            data: bytes = fh.read()
        return data

    def head(self, sha: str, size: int) -> tuple[bytes, int]:
        """The first ``size`` bytes of a blob and its whole size (reads no more)."""
        path = self._blob_path(sha)
        try:
            with self.fs.open(path, "rb") as fh:
                return fh.read(size), int(self.fs.size(path))
        except FileNotFoundError:
            raise NotFound(f"artifact {sha} is not in the store at {self.root}") from None

    def get_json(self, sha: str) -> Any:
        return json.loads(self.get_bytes(sha))

    def local_path(self, sha: str) -> str:
        """A local filesystem path of a blob (only for a file:// root)."""
        if self.protocol != "file":
            raise InvalidArgument("local paths exist only for a local artifact root")
        path = self._blob_path(sha)
        if not self.fs.exists(path):
            raise NotFound(f"artifact {sha} is not in the store at {self.root}")
        return path

    def put_upload(self, data: bytes, filename: str) -> tuple[str, str]:
        """Store a user's file as ``uploads/<sha[:16]>/<filename>``; return its
        path and sha256. Content-addressed like a blob (the same bytes land
        once), yet named, so a message about the file still shows the name
        the user gave it, and inside the root, so every service may read it
        (path guard)."""
        sha = sha256_hex(data)
        path = self.resolve_user_path(f"{sha[:16]}/{_check_name('file name', filename)}")
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)
        return str(path), sha

    def _refresh(self, path: str) -> None:
        """Make a blob young again when it is stored a second time, so that
        ``bitmesh gc``, which spares young blobs, does not delete it while the
        new writer has yet to store its reference. Backends that cannot touch
        (object stores) keep the old time."""
        with contextlib.suppress(NotImplementedError, ValueError, OSError):
            self.fs.touch(path, truncate=False)

    def blob_mtime(self, sha: str) -> float | None:
        """When a blob was last written or refreshed; None when it is absent."""
        try:
            return _mtime(self.fs.info(self._blob_path(sha)))
        except FileNotFoundError:
            return None

    def delete(self, sha: str) -> bool:
        """Remove a blob; False when it was not there. Only the collector calls this."""
        path = self._blob_path(sha)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def remove_path(self, path: str) -> None:
        """Remove a listed file (:meth:`blobs`) inside ``cas/``, e.g. an abandoned tmp file."""
        if not path.startswith(f"{self.root}/cas/"):
            raise InvalidArgument(f"{path!r} is not a file of the blob store at {self.root}")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def blobs(self) -> Iterator[StoredBlob]:
        """Every file under ``cas/``: blobs and temporary files of writes in flight."""
        base = f"{self.root}/cas"
        if not self.fs.exists(base):
            return
        for path, info in self.fs.find(base, detail=True).items():
            name = path.rsplit("/", 1)[-1]
            sha = name if _SHA256.match(name) else None
            if sha is None and ".tmp-" not in name:
                continue
            yield StoredBlob(
                path=path, sha256=sha, mtime=_mtime(info), size_bytes=int(info.get("size", 0))
            )

    # -- named references --------------------------------------------------
    def set_ref(self, namespace: str, key: str, value: Mapping[str, Any]) -> Artifact:
        """Store ``value`` as a blob and point ``namespace/key`` at it."""
        artifact = self.put_json(dict(value))
        path = self._ref_path(namespace, key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(stable_json({"sha256": artifact.sha256}))
        self.fs.mv(tmp, path)
        return artifact

    def get_ref(self, namespace: str, key: str) -> Any | None:
        """The JSON value behind ``namespace/key``, or None when absent."""
        path = self._ref_path(namespace, key)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as fh:
            pointer = json.loads(fh.read())
        return self.get_json(pointer["sha256"])

    def delete_ref(self, namespace: str, key: str) -> bool:
        """Remove ``namespace/key`` (its blob stays until ``bitmesh gc``)."""
        try:
            self.fs.rm_file(self._ref_path(namespace, key))
        except FileNotFoundError:
            return False
        return True

    def refs(self) -> Iterator[StoredRef]:
        """Every named reference and the blob it points at."""
        base = f"{self.root}/refs"
        if not self.fs.exists(base):
            return
        for path in self.fs.find(base):
            relative = path[len(base) + 1 :]
            if relative.count("/") != 1 or not relative.endswith(".json"):
                continue  # a temporary file of a write in flight
            namespace, name = relative.split("/")
            try:
                with self.fs.open(path, "rb") as fh:
                    pointer = json.loads(fh.read())
            except FileNotFoundError:
                continue  # deleted while listed
            yield StoredRef(namespace, name.removesuffix(".json"), str(pointer["sha256"]))

    def resolve_user_path(self, relative: str) -> str:
        """A path inside the root for a name a user sent; refuses escapes."""
        parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or any(p == ".." for p in parts) or relative.startswith("/"):
            raise InvalidArgument(
                f"path {relative!r} escapes the artifact root; give a path relative to it "
                "without '..'"
            )
        return f"{self.root}/uploads/" + "/".join(_check_name("path part", p) for p in parts)


def cache_key(*parts: Any) -> str:
    """A short stable key over JSON-able parts (used for result caches)."""
    return sha256_hex(stable_json(list(parts)))[:40]
