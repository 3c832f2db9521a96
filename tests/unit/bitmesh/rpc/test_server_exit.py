"""A stopping service exits even when a library leaves a thread running."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]

SERVICE = textwrap.dedent(
    """
    import threading
    from bitmesh.rpc.server import create_server, serve_until_signal
    from bitmesh.settings import load_settings

    # A non-daemon thread that never ends: the interpreter's exit would wait for it.
    threading.Thread(target=threading.Event().wait, name="stuck-library-thread").start()
    running = create_server("127.0.0.1:0", [], [], load_settings())
    serve_until_signal(
        running, grace=0.2, exit_margin=0.5, ready=lambda: print("serving", flush=True)
    )
    """
)


def test_a_stuck_thread_cannot_keep_a_stopped_service_alive() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "non-daemon threads: stuck-library-thread" in err
    assert "stuck-library-thread" in err or "Thread 0x" in err  # the stack dump
