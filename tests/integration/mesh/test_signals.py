"""A service stops gracefully whichever of its threads the kernel hands SIGTERM.

Why: a process-directed signal goes to any thread that does not block it
(grpc runs several). Python runs the handler only when its main thread next
runs bytecode; a main thread blocked in a plain ``Event.wait()`` never did,
so the service ignored that SIGTERM for good (a test's 30 s wait timed out).
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import tempfile

import pytest

from tests.integration.mesh.helpers import spawn_service, wait_serving

pytestmark = pytest.mark.integration

#: tgkill(2): a signal to one thread of a process.
_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(_TGKILL is None or not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_sigterm_to_a_non_main_thread_stops_the_service() -> None:
    service = wait_serving(
        "trainer",
        spawn_service(
            "trainer", tempfile.mkdtemp(), extra_env={"BITMESH_TRAINER_WARM_IMPORTS": "0"}
        ),
    )
    pid = service.process.pid
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert threads, "a gRPC server runs threads of its own"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_TGKILL, pid, threads[-1], signal.SIGTERM) == 0
    try:
        code = service.process.wait(30)  # no second signal: that one must do
    except subprocess.TimeoutExpired:
        service.process.kill()
        raise AssertionError("the service ignored a SIGTERM its main thread did not get") from None
    rest = service.process.stdout.read() if service.process.stdout else ""
    assert code == 0 and '"stopped"' in rest, f"exit {code}:\n{rest}"
