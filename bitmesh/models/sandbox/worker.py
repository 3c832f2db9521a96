"""The service's side of the sandbox: one long-lived child, limits, restarts.

A model file is code (a ``.pt2`` graph runs ATen ops), so the API services
never load or run one in their own process: :meth:`Sandbox.describe` sends
the spec to a child process (:mod:`bitmesh.models.sandbox.child`) and gets
the layer table back as JSON (:meth:`Sandbox.weight_errors` also the weight
errors per option, the one thing a service needs of a program's weights).
The child is

- **isolated**: its environment is built from :data:`ENV_ALLOWLIST` (no
  ``BITMESH_*`` variable reaches it, so no token, TLS key path or Redis
  URL), its working directory is an empty temporary folder, and it sees no
  GPU;
- **capped**: memory and CPU rlimits set by the child on itself
  (``BITMESH_SANDBOX_MEMORY_BYTES``, ``BITMESH_SANDBOX_CPU_SECONDS``), and a
  wall clock per request enforced here (``BITMESH_SANDBOX_WALL_SECONDS``):
  past it the child is killed. The limits are read per request; the memory
  cap is set when the child starts, so a changed one starts a new child;
- **reused**: it stays up between requests, so its torch import (seconds) is
  paid once and a file it has described is answered from its memory; after
  a kill or a crash it is started again on the next request (one that
  answered a failure itself, a denied allocation included, stays up: a
  failed allocation leaves nothing behind).

Requests are served one at a time (a lock): the child is single-threaded,
and a second child would double the memory the pod must hold for it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import bitmesh
from bitmesh.errors import InvalidArgument, ResourceExhausted, Unavailable
from bitmesh.models.sandbox.protocol import MAX_REPLY_BYTES, error_from_reply
from bitmesh.models.sandbox.table import (
    MAX_ERROR_OPTIONS,
    ModelTable,
    errors_from_json,
    spec_to_json,
)
from bitmesh.models.spec import ModelSpec

if TYPE_CHECKING:
    from bitmesh.formats import QuantOption

__all__ = ["ENV_ALLOWLIST", "Sandbox", "SandboxLimits", "child_environment"]

logger = logging.getLogger(__name__)

#: The only variables the child inherits: what Python and its libraries need
#: to start, nothing that names a secret.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "TZ")


#: How long a child whose output closed gets to report its exit status.
_EXIT_WAIT_S = 2.0


class SandboxLimits:
    """The child's caps, from the settings (see bitmesh/settings.py)."""

    def __init__(
        self, memory_bytes: int, cpu_seconds: int, wall_seconds: float, start_seconds: float
    ) -> None:
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        self.wall_seconds = wall_seconds
        self.start_seconds = start_seconds

    @classmethod
    def current(cls) -> SandboxLimits:
        from bitmesh.settings import load_settings

        s = load_settings()
        return cls(
            s.sandbox_memory_bytes,
            s.sandbox_cpu_seconds,
            s.sandbox_wall_seconds,
            s.sandbox_start_seconds,
        )


def child_environment(scratch: str) -> dict[str, str]:
    """The child's whole environment: the allowlist, plus what pins it to
    one CPU thread, no GPU, and ``scratch`` (its own folder, not its working
    directory) for what torch writes (inductor's cache, temporary files)."""
    env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
    env.update(
        {
            "HOME": scratch,
            "TMPDIR": scratch,
            "PYTHONPATH": str(Path(bitmesh.__file__).resolve().parent.parent),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "BITMESH_DEVICE": "cpu",
        }
    )
    return env


class Sandbox:
    """One child process that describes model files under limits."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._buffer = b""
        self._memory_bytes = 0  # the cap the running child set on itself
        self._closed = False  # its output ended (it exited)
        self.starts = 0  # how many children were started (tests, metrics)

    @property
    def limits(self) -> SandboxLimits:
        return self._limits or SandboxLimits.current()

    def describe(self, spec: ModelSpec) -> ModelTable:
        """The layer table of ``spec``'s model, computed in the child.

        Raises what loading the model raises (InvalidArgument, NotFound,
        FailedPrecondition), ResourceExhausted past a memory, CPU or wall
        cap, Unavailable when the child cannot start.
        """
        return self._table(self._ask(spec, {}))

    def weight_errors(
        self, spec: ModelSpec, options: Sequence[QuantOption]
    ) -> tuple[ModelTable, list[list[float]]]:
        """The layer table of ``spec``'s model and, per layer and option,
        ||Q_f(W) - W||^2 of its weight, computed in the child under the same
        caps as :meth:`describe` (what proxy NAS's budget problem needs of a
        program's weights). Raises as :meth:`describe`, and InvalidArgument
        for more than ``MAX_ERROR_OPTIONS`` options."""
        if len(options) > MAX_ERROR_OPTIONS:
            raise InvalidArgument(
                f"{len(options)} candidate options to price; at most {MAX_ERROR_OPTIONS}"
            )
        reply = self._ask(spec, {"weight_errors": [o.key for o in options]})
        table = self._table(reply)
        try:
            errors = errors_from_json(reply.get("weight_errors"), len(table.layers), len(options))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"the sandbox gave unreadable weight errors ({exc})") from exc
        return table, errors

    def _ask(self, spec: ModelSpec, extra: dict[str, Any]) -> dict[str, Any]:
        """The child's reply to a request about ``spec`` (plus ``extra`` fields)."""
        with self._lock:
            limits = self.limits
            request = {
                "spec": spec_to_json(_absolute(spec)),
                "cpu_seconds": limits.cpu_seconds,
                **extra,
            }
            process = self._ensure_started(limits)
            return self._exchange(process, request, limits)

    @staticmethod
    def _table(reply: dict[str, Any]) -> ModelTable:
        if reply.get("ok") is True:
            try:
                return ModelTable.from_json(reply["table"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"the sandbox gave an unreadable table ({exc})") from exc
        # A failure the child reported itself (a refused op, an allocation it
        # was denied) leaves it sound: it stays up for the next request.
        raise error_from_reply(reply)

    def close(self) -> None:
        """Stop the child (service shutdown)."""
        with self._lock:
            self._stop()

    # -- the child's life ---------------------------------------------------

    def _ensure_started(self, limits: SandboxLimits) -> subprocess.Popen[bytes]:
        if (
            self._process is not None
            and self._process.poll() is None
            and self._memory_bytes == limits.memory_bytes
        ):
            return self._process
        self._stop()
        self._workdir = tempfile.TemporaryDirectory(prefix="bitmesh-sandbox-")
        cwd, scratch = Path(self._workdir.name, "cwd"), Path(self._workdir.name, "scratch")
        cwd.mkdir()
        scratch.mkdir()
        command = [
            sys.executable,
            "-m",
            "bitmesh.models.sandbox.child",
            f"--memory-bytes={limits.memory_bytes}",
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=child_environment(str(scratch)),
            close_fds=True,
            start_new_session=True,
        )
        self._process = process
        self._memory_bytes = limits.memory_bytes
        self._buffer = b""
        self._closed = False
        self.starts += 1
        ready = self._read_line(process, limits.start_seconds)
        if ready is None or ready.strip() != b'{"ready": true}':
            self._stop()
            raise Unavailable(
                f"the model sandbox did not start within BITMESH_SANDBOX_START_SECONDS="
                f"{limits.start_seconds:g} (or ended while starting); try again"
            )
        return process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _exchange(
        self, process: subprocess.Popen[bytes], request: dict[str, Any], limits: SandboxLimits
    ) -> dict[str, Any]:
        stdin: IO[bytes] | None = process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
        except OSError:
            self._stop()
            raise Unavailable("the model sandbox ended before the request; try again") from None
        line = self._read_line(process, limits.wall_seconds)
        if line is None:
            # Its output closes as it exits: wait briefly for the status that
            # says why (SIGXCPU, a kill), else it is still running: the wall clock.
            ended: int | None = None
            if self._closed:
                try:
                    ended = process.wait(timeout=_EXIT_WAIT_S)
                except subprocess.TimeoutExpired:
                    ended = None
            self._stop()
            raise _limit_error(ended, limits)
        try:
            reply = json.loads(line)
        except ValueError:
            self._stop()
            raise InvalidArgument("the model sandbox gave an unreadable reply") from None
        if not isinstance(reply, dict):
            self._stop()
            raise InvalidArgument("the model sandbox gave an unreadable reply")
        return reply

    def _read_line(self, process: subprocess.Popen[bytes], seconds: float) -> bytes | None:
        """One reply line within ``seconds``, or None (timeout, or the child ended)."""
        stdout = process.stdout
        assert stdout is not None
        deadline = time.monotonic() + seconds
        fd = stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self._closed = True
                return None
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _absolute(spec: ModelSpec) -> ModelSpec:
    """The spec with absolute paths (the child runs in another folder)."""
    from dataclasses import replace

    name = spec.name_or_path
    if spec.source != "architecture":
        name = os.path.abspath(name)
    weights = os.path.abspath(spec.weights_path) if spec.weights_path else None
    return replace(spec, name_or_path=name, weights_path=weights)


def _limit_error(returncode: int | None, limits: SandboxLimits) -> ResourceExhausted:
    """What a child that did not answer ran into."""
    import signal

    if returncode == -signal.SIGXCPU:
        return ResourceExhausted(
            f"the model's forward used more CPU than BITMESH_SANDBOX_CPU_SECONDS="
            f"{limits.cpu_seconds}: give a smaller model or input shape, or raise the setting"
        )
    if returncode is not None and returncode != 0:
        return ResourceExhausted(
            f"the model sandbox ended (exit status {returncode}) while loading or running the "
            f"model, most likely over BITMESH_SANDBOX_MEMORY_BYTES={limits.memory_bytes}"
        )
    return ResourceExhausted(
        f"the model's forward ran past BITMESH_SANDBOX_WALL_SECONDS={limits.wall_seconds:g}: "
        "give a model whose forward ends, a smaller input shape, or raise the setting"
    )
