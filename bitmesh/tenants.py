"""Tenants: who a caller is, and which part of the mesh's state is theirs.

A tenant is a name that owns jobs and files. The auth interceptor
(:mod:`bitmesh.rpc.auth`) finds the caller's tenant from its bearer token and
makes it current for the whole call (a context variable, like the request id
in :mod:`bitmesh.logs`); servicers read it with :func:`current_tenant` and
stamp it on the jobs they create, and refuse every other tenant's job as if
it did not exist.

Tokens come from two settings, both optional:

- ``BITMESH_AUTH_TOKEN``: one shared token, the tenant ``default`` (the
  single-token setup of before tenants: nothing changes for it);
- ``BITMESH_TOKEN_FILE``: a file of ``tenant: token`` lines (``#`` starts a
  comment, blank lines are skipped), one per tenant or more (a rotated token
  beside its successor). It is text, not YAML or JSON, so that no parser
  decides what a token is: a token is the rest of the line, stripped.

With neither, authentication is off and every caller is ``default`` (the
embedded loopback mesh).

Files: a tenant's namespace is a folder of the artifact root
(:func:`namespace_of`): the root itself for ``default`` (so a single-token
mesh keeps its layout and its data), ``tenants/<name>/`` for every other
tenant. Each namespace is a whole artifact store of its own (``cas/``,
``refs/``, ``uploads/``), so caches, checkpoints and uploads never mix.

This module imports neither grpc nor torch: domain code and workers read it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TENANT = "default"
#: The folder of the artifact root that holds every other tenant's namespace.
TENANTS_FOLDER = "tenants"
#: A tenant's name is a folder name and a log field: short, plain, lower case.
TENANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)
#: Shorter tokens are guessable; ``openssl rand -hex 32`` gives 64 characters.
MIN_TOKEN_CHARS = 16

_TENANT: ContextVar[str] = ContextVar("bitmesh_tenant", default=DEFAULT_TENANT)
_TOKEN: ContextVar[str | None] = ContextVar("bitmesh_caller_token", default=None)


class TokenFileError(ValueError):
    """The token file cannot be used; the message says which line and why."""


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.match(name):
        raise TokenFileError(
            f"tenant name {name!r} is not allowed: use 1-63 lower-case letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class TokenTable:
    """Every token the mesh accepts and the tenant each one belongs to."""

    entries: tuple[tuple[str, bytes], ...] = ()  # (tenant, token)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(tenant for tenant, _ in self.entries)

    def tenant_of(self, token: str) -> str | None:
        """The tenant whose token ``token`` is, or None.

        Compared with every entry in constant time, without stopping at the
        first match, so the time taken says nothing about which token (or
        how much of one) matched.
        """
        sent = token.encode()
        found: str | None = None
        for tenant, expected in self.entries:
            if hmac.compare_digest(sent, expected) and found is None:
                found = tenant
        return found


def parse_token_file(text: str, source: str = "the token file") -> TokenTable:
    """``tenant: token`` lines into a table; refuses anything ambiguous."""
    entries: list[tuple[str, bytes]] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tenant, colon, token = line.partition(":")
        tenant, token = tenant.strip(), token.strip()
        where = f"{source}, line {number}"
        if not colon or not token:
            raise TokenFileError(f"{where}: expected 'tenant: token'")
        try:
            check_tenant_name(tenant)
        except TokenFileError as exc:
            raise TokenFileError(f"{where}: {exc}") from None
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise TokenFileError(
                f"{where}: the token of {tenant!r} must be at least {MIN_TOKEN_CHARS} "
                "characters with no spaces (openssl rand -hex 32 makes one)"
            )
        key = token.encode()
        if key in seen and seen[key] != tenant:
            raise TokenFileError(
                f"{where}: tenant {seen[key]!r} has this token too; give each tenant its own"
            )
        seen[key] = tenant
        entries.append((tenant, key))
    return TokenTable(tuple(entries))


def token_table(auth_token: str | None, token_file: str | None) -> TokenTable:
    """The tokens of the settings: the shared token (tenant ``default``) and
    the file's. Raises :class:`TokenFileError` for a file that is unreadable
    or malformed, or that gives the shared token to another tenant."""
    entries: list[tuple[str, bytes]] = []
    if auth_token:
        entries.append((DEFAULT_TENANT, auth_token.encode()))
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(
                f"BITMESH_TOKEN_FILE {token_file!r} cannot be read ({type(exc).__name__})"
            ) from None
        table = parse_token_file(text, f"BITMESH_TOKEN_FILE {token_file!r}")
        for tenant, token in table.entries:
            if auth_token and token == auth_token.encode() and tenant != DEFAULT_TENANT:
                raise TokenFileError(
                    f"BITMESH_TOKEN_FILE gives BITMESH_AUTH_TOKEN (tenant {DEFAULT_TENANT!r}) "
                    f"to {tenant!r}; give each tenant its own token"
                )
        entries.extend(table.entries)
    return TokenTable(tuple(entries))


def current_tenant() -> str:
    """The tenant of the call being served ('default' outside a call or with no auth)."""
    return _TENANT.get()


def caller_token() -> str | None:
    """The bearer token of the call being served, for calls to a peer made on
    the caller's behalf (so the peer sees the same tenant); None without auth."""
    return _TOKEN.get()


@contextmanager
def tenant_scope(tenant: str, token: str | None = None) -> Iterator[str]:
    """Make ``tenant`` (and the token it came with) current for the block."""
    tenant_reset = _TENANT.set(tenant)
    token_reset = _TOKEN.set(token)
    try:
        yield tenant
    finally:
        _TOKEN.reset(token_reset)
        _TENANT.reset(tenant_reset)


def namespace_of(root: str, tenant: str) -> str:
    """The artifact root of ``tenant``'s own store, under the mesh's ``root``
    (a path or an fsspec URL): ``root`` itself for ``default``."""
    if tenant == DEFAULT_TENANT:
        return root
    return f"{root.rstrip('/')}/{TENANTS_FOLDER}/{check_tenant_name(tenant)}"
