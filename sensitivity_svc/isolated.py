"""A program file's analysis runs in a child process, never in the service's.

A ``.pt2`` is code (its graph runs ATen ops), and the sandbox
(:mod:`bitmesh.models.sandbox`) only vets it on a one-sample probe: a forward
that behaves differently at the batch size, or on the data rather than on
zeros, would do so in whatever process runs the analysis. So for a program
file the service loads nothing: :func:`analyse_in_child` starts
:mod:`sensitivity_svc.isolated_child` for the job, which loads the model,
checks the data against it and estimates the traces, and only JSON (the
progress and the report, numbers and names, never a pickle) comes back.

- **Isolated** as the sandbox is: the environment from
  :func:`~bitmesh.models.sandbox.worker.child_environment` (no ``BITMESH_*``
  setting, no Redis URL, no GPU), an empty temporary working directory. Only
  the thread count differs: the child gets the service's torch threads, as
  the in-process analysis would have.
- **Capped**: ``BITMESH_ANALYSIS_MEMORY_BYTES`` of address space past its
  imports, lowered by the child to twice the analysis's own estimate once the
  model is loaded (see the child's docstring).
- **The job's semantics**: a cancel (the user's, or the runner's at service
  shutdown) kills the child within :data:`POLL_S`; a child that dies (out of
  memory, a signal) fails the job with a bounded message naming the cap; its
  running estimates are handed to the job's progress function, so Watch
  shows them as for an in-process analysis.

One child per analysis, ended with it: nothing one user's program leaves in
a process meets another's. Its start (the imports and a warm-up load, 10-20 s
of a busy 2-core machine) is paid ahead from the second analysis of a
program on: the first starts one spare child beside its own
(``BITMESH_ANALYSIS_SPARE_CHILD``), which the next analysis takes, starting
the next spare as it does; the first analysis itself pays the start. Architecture names run in the service
as before, with no child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bitmesh.errors import Cancelled, InvalidArgument, ResourceExhausted
from bitmesh.formats import QuantOption
from bitmesh.models.layers import LayerProfile
from bitmesh.models.sandbox.protocol import MAX_REPLY_BYTES, error_from_reply, sanitize
from bitmesh.models.sandbox.table import spec_to_json
from bitmesh.models.sandbox.worker import _absolute, child_environment
from bitmesh.models.spec import ModelSpec
from sensitivity_svc.analysis import SensitivitySettings
from sensitivity_svc.hutchinson import CancelFlag, LayerTrace
from sensitivity_svc.report import SensitivityReport

__all__ = ["POLL_S", "analyse_in_child", "close_spare", "live_children", "spare_pid"]

#: How often the service checks the job's cancel flag while the child works.
POLL_S = 0.2

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def live_children() -> list[int]:
    """The pids of the analysis children running now (tests, metrics)."""
    with _live_lock:
        return sorted(_live)


def _memory_bytes() -> int:
    from bitmesh.settings import load_settings

    return load_settings().analysis_memory_bytes


def _wall_seconds() -> float:
    from bitmesh.settings import load_settings

    return load_settings().analysis_wall_seconds


def _keep_spare() -> bool:
    from bitmesh.settings import load_settings

    return load_settings().analysis_spare_child


_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def _child_slots() -> threading.BoundedSemaphore:
    """Analysis children that may run at once (``BITMESH_ANALYSIS_MAX_CHILDREN``).

    Why a cap apart from the job cap: each child may take
    ``BITMESH_ANALYSIS_MEMORY_BYTES`` on top of its torch import, and the
    pod's memory limit is sized for this many of them beside the service,
    the model sandbox and the spare (``deploy/k8s``, checked by
    tests/unit/deploy); four concurrent program analyses at 4 GiB each
    would have the kernel kill the whole pod instead."""
    global _slots
    with _slots_lock:
        if _slots is None:
            from bitmesh.settings import load_settings

            _slots = threading.BoundedSemaphore(load_settings().analysis_max_children)
        return _slots


def _wait_for_slot(cancel: CancelFlag) -> threading.BoundedSemaphore:
    """A child slot, waited for while the job can still be cancelled."""
    slots = _child_slots()
    while not slots.acquire(timeout=POLL_S):
        if cancel.is_set():
            raise Cancelled("the analysis was cancelled")
    return slots


@contextlib.contextmanager
def _child_slot(cancel: CancelFlag) -> Iterator[None]:
    """Hold one of the child slots for the block (:func:`_wait_for_slot`)."""
    slots = _wait_for_slot(cancel)
    try:
        yield
    finally:
        slots.release()


def analyse_in_child(
    spec: ModelSpec,
    batches: Sequence[tuple[Tensor, Tensor]],
    layers: Sequence[LayerProfile],
    options: Sequence[QuantOption],
    settings: SensitivitySettings,
    seed: int,
    progress: Callable[[str, LayerTrace], None] | None,
    cancel: CancelFlag,
    stored: SensitivityReport | None = None,
) -> SensitivityReport:
    """The report :func:`sensitivity_svc.analysis.analyse` would give for the
    model of ``spec`` on ``batches`` (same seed, same traces), computed in a
    child; or, given ``stored``, that report with ``options`` priced too.

    Raises what the analysis raises (InvalidArgument, FailedPrecondition,
    ResourceExhausted: the child's own report), ResourceExhausted when the
    child dies, Cancelled when ``cancel`` is set."""
    memory_bytes = _memory_bytes()
    with _child_slot(cancel):
        child = _take(memory_bytes)
        try:
            _refill(memory_bytes)
            data = Path(child.root.name, "batches.pt")
            torch.save([(i.detach().cpu(), t.detach().cpu()) for i, t in batches], data)
            request: dict[str, Any] = {
                "spec": spec_to_json(_absolute(spec)),
                "batches": str(data),
                "layers": [asdict(layer) for layer in layers],
                "options": [o.key for o in options],
                "settings": asdict(settings),
                "seed": seed,
            }
            if stored is not None:
                request.update(mode="price", stored=stored.to_dict())
            stdin = child.process.stdin
            assert stdin is not None
            try:
                stdin.write(json.dumps(request).encode() + b"\n")
                stdin.flush()
            except OSError:
                raise _death(child.process, memory_bytes) from None
            reply = _follow(child.process, progress, cancel, memory_bytes)
        finally:
            child.end()
    if reply.get("ok") is not True:
        raise error_from_reply(reply)
    try:
        return SensitivityReport.from_dict(reply["report"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"the analysis child gave an unreadable report ({sanitize(exc)})"
        ) from exc


class _Child:
    """One analysis child and its folder (``cwd`` empty, ``scratch`` its
    HOME and TMPDIR, the batches file beside them), used for one analysis."""

    def __init__(self, memory_bytes: int) -> None:
        self.root = tempfile.TemporaryDirectory(prefix="bitmesh-analysis-")
        cwd, scratch = Path(self.root.name, "cwd"), Path(self.root.name, "scratch")
        cwd.mkdir()
        scratch.mkdir()
        env = child_environment(str(scratch))
        self.threads = torch.get_num_threads()
        # Two malloc arenas: glibc's default reserves 64 MiB of address space
        # per thread (13 in an analysis), which the child's RLIMIT_AS counts.
        threads = str(self.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, MALLOC_ARENA_MAX="2")
        self.memory_bytes = memory_bytes
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sensitivity_svc.isolated_child",
                f"--memory-bytes={memory_bytes}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=True,
        )

    def fits(self, memory_bytes: int) -> bool:
        """Whether it was started for these settings and is still up."""
        return (
            self.process.poll() is None
            and self.memory_bytes == memory_bytes
            and self.threads == torch.get_num_threads()
        )

    def end(self) -> None:
        """Kill it if it still runs, reap it, close its pipes, remove its folder."""
        process = self.process
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with _live_lock:
            _live.pop(process.pid, None)
        self.root.cleanup()


_spare: _Child | None = None
_spare_lock = threading.Lock()


def _take(memory_bytes: int) -> _Child:
    """A child for one analysis: the spare started ahead when it fits (its
    imports done or under way), else a new one."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None and not child.fits(memory_bytes):
        child.end()
        child = None
    if child is None:
        child = _Child(memory_bytes)
    with _live_lock:
        _live[child.process.pid] = child.process
    return child


def _refill(memory_bytes: int) -> None:
    """Start the next spare as an analysis takes one, so it has that whole
    analysis to get ready. Started once the analysis ended instead (so its
    imports did not take the analysis's CPU), back-to-back analyses of
    digits_cnn took 13 s each against 4 s (bench_analysis_child.py)."""
    global _spare
    if not _keep_spare():
        return
    with _spare_lock:
        if _spare is None:
            _spare = _Child(memory_bytes)


def close_spare(grace: float = 0.0) -> None:
    """End the spare child (a service's stop hook; tests)."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None:
        child.end()


def spare_pid() -> int | None:
    """The spare child's pid, if one is started (tests)."""
    with _spare_lock:
        return _spare.process.pid if _spare is not None else None


def _follow(
    process: subprocess.Popen[bytes],
    progress: Callable[[str, LayerTrace], None] | None,
    cancel: CancelFlag,
    memory_bytes: int,
) -> dict[str, Any]:
    """Read the child's lines until its reply; progress goes to ``progress``.

    Past ``BITMESH_ANALYSIS_WALL_SECONDS`` the child is killed and the job
    fails RESOURCE_EXHAUSTED naming it: a program that is slow at the real
    batch size would otherwise hold the only child slot for ever."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    wall = _wall_seconds()
    deadline = time.monotonic() + wall
    while True:
        if cancel.is_set():
            process.kill()
            raise Cancelled("the analysis was cancelled")
        if time.monotonic() > deadline:
            process.kill()
            raise ResourceExhausted(
                f"the analysis of the program ran past {wall:g} s and was stopped "
                "(BITMESH_ANALYSIS_WALL_SECONDS): use fewer samples or batches, or ask "
                "the operator to raise the limit"
            )
        readable, _, _ = select.select([fd], [], [], POLL_S)
        if not readable:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            raise _death(process, memory_bytes)
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            message = _parse(line)
            if "progress" not in message:
                return message
            if progress is not None:
                stage, estimate = _estimate(message["progress"])
                progress(stage, estimate)
        if len(buffer) > MAX_REPLY_BYTES:
            process.kill()
            raise InvalidArgument("the analysis child gave a reply past its size limit")


def _parse(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise InvalidArgument("the analysis child gave an unreadable reply")
    return message


def _estimate(item: Any) -> tuple[str, LayerTrace]:
    try:
        return str(item["stage"]), LayerTrace(
            name=str(item["name"]),
            trace=float(item["trace"]),
            standard_error=float(item["standard_error"]),
            samples=int(item["samples"]),
            done=bool(item["done"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"the analysis child gave an unreadable estimate ({sanitize(exc)})"
        ) from exc


def _death(process: subprocess.Popen[bytes], memory_bytes: int) -> ResourceExhausted:
    """What a child whose output ended without a reply ran into."""
    try:
        code = process.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        process.kill()
        how = "closed its output"
    elif code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"ended (exit status {code})"
    return ResourceExhausted(
        f"the analysis of the model file {how} before it reported, most likely out of "
        f"memory (the child may use BITMESH_ANALYSIS_MEMORY_BYTES={memory_bytes}): give a "
        "smaller batch_size or input shape, or raise the setting"
    )
