"""``bitmesh run`` warms its last steps' imports without taking CPU from the
mesh's work: the background importer runs at the lowest priority."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from bitmesh import warm

pytestmark = pytest.mark.unit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_background_importer_runs_at_the_lowest_priority_and_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module that records, as it is imported, the nice value of the thread importing it.
    (tmp_path / "bitmesh_probe_nice.py").write_text(
        "import os, threading\nNICE = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bitmesh_probe_nice", raising=False)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    warm.warm_in_background(["bitmesh_probe_nice"]).join(30)

    probe = sys.modules["bitmesh_probe_nice"]
    nice = probe.NICE
    assert nice == max(before, warm.BACKGROUND_NICENESS)
    # The calling thread keeps its own priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
