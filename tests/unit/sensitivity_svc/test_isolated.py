"""The service's side of the analysis child, against real processes that
are not analysis children (fast): cancel, death and garbled output."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from bitmesh.errors import Cancelled, InvalidArgument, ResourceExhausted
from sensitivity_svc.isolated import _follow


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _ended(process: subprocess.Popen[bytes]) -> int:
    code = process.wait(timeout=10)
    for stream in (process.stdin, process.stdout):
        assert stream is not None
        stream.close()
    return code


def test_a_cancel_kills_the_child_and_raises() -> None:
    process = _child("import time; time.sleep(60)")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):
        _follow(process, None, cancel, 1 << 30)
    assert _ended(process) < 0  # killed, not ended by itself


def test_a_child_past_its_wall_clock_is_killed_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITMESH_ANALYSIS_WALL_SECONDS", "0.5")
    process = _child("import time; time.sleep(60)")
    with pytest.raises(ResourceExhausted, match="BITMESH_ANALYSIS_WALL_SECONDS"):
        _follow(process, None, threading.Event(), 1 << 30)
    assert _ended(process) < 0  # killed, not ended by itself


def test_a_child_killed_by_a_signal_is_a_bounded_resource_error() -> None:
    process = _child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(ResourceExhausted) as caught:
        _follow(process, None, threading.Event(), 123)
    message = caught.value.message
    assert "killed by signal SIGKILL" in message
    assert "BITMESH_ANALYSIS_MEMORY_BYTES=123" in message and len(message) <= 400
    _ended(process)


def test_progress_lines_reach_the_callback_before_the_reply() -> None:
    lines = [
        '{"progress": {"stage": "weights", "name": "fc", "trace": 2.0, '
        '"standard_error": Infinity, "samples": 1, "done": false}}',
        '{"ok": true, "report": {}}',
    ]
    process = _child(f"import sys; sys.stdout.write({chr(10).join(lines)!r} + '\\n')")
    seen = []
    reply = _follow(process, lambda stage, e: seen.append((stage, e)), threading.Event(), 1)
    assert reply == {"ok": True, "report": {}}
    ((stage, estimate),) = seen
    assert stage == "weights" and estimate.name == "fc" and estimate.trace == 2.0
    _ended(process)


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"progress": {"stage": "w"}}'])
def test_garbled_output_is_refused(line: str) -> None:
    process = _child(f"import sys, time; print({line!r}, flush=True); time.sleep(60)")
    with pytest.raises(InvalidArgument, match="the analysis child gave an unreadable"):
        _follow(process, lambda stage, e: None, threading.Event(), 1)
    process.kill()
    _ended(process)


def test_children_past_the_cap_wait_for_a_slot_and_can_be_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BITMESH_ANALYSIS_MAX_CHILDREN bounds the children the pod must hold:
    an analysis past it waits for a slot, and a cancel ends the wait."""
    from sensitivity_svc import isolated

    monkeypatch.setenv("BITMESH_ANALYSIS_MAX_CHILDREN", "1")
    monkeypatch.setattr(isolated, "_slots", None)  # read the setting afresh
    held = isolated._wait_for_slot(threading.Event())  # the one slot, taken
    cancel = threading.Event()
    outcome: list[object] = []

    def second() -> None:
        try:
            outcome.append(isolated._wait_for_slot(cancel))
        except Cancelled as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(timeout=3 * isolated.POLL_S)
    assert waiter.is_alive() and not outcome  # still waiting: the cap holds
    cancel.set()
    waiter.join(timeout=5)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    held.release()
    isolated._wait_for_slot(threading.Event()).release()  # free again once released
