"""Import modules ahead of the moment they are first needed.

Python imports are seconds of CPU for the heavy libraries bitmesh loads
lazily (torch, torchvision, matplotlib, the ONNX exporter), so that the
parts that do not need them stay light. Where a process knows it will need
them soon, importing them early takes them out of the wall time of the step
that needs them: a Celery pool process before its first task
(``trainer_svc.warm``), ``bitmesh run`` while it waits on the mesh
(``bitmesh.pipeline.run``).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)


def warm_imports(modules: Iterable[str]) -> float:
    """Import ``modules``; return the seconds it took (logged).

    A module that fails to import is logged and skipped: warming is a head
    start, never a reason for a process not to start (the step that needs
    the module then fails with its own error)."""
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or anything a module raises at import
            log.warning("could not import %s ahead of its first use: %s", name, exc)
    seconds = time.perf_counter() - started
    log.info("modules imported ahead of use in %.2f s", seconds)
    return seconds


#: The background importer's niceness: the lowest priority Linux has.
BACKGROUND_NICENESS = 19


def _warm_politely(modules: tuple[str, ...]) -> None:
    """:func:`warm_imports` at the lowest CPU priority, for this thread only.

    Why: the head start must not slow what runs meanwhile. ``bitmesh run``
    warms while the mesh's first job runs on the same machine, and on 2 cores
    those imports (a core for seconds) took a core from the worker's torch
    threads, whose OpenMP spin-waits then stretched the first job's model
    probe from 0.04 s to over a second (measured under load). Linux gives
    each thread its own nice value (``setpriority`` on the thread's id), so
    only this thread yields; where that is not allowed it warms at normal
    priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        log.debug("warming at normal priority: %s", exc)
    warm_imports(modules)


def warm_in_background(modules: Iterable[str], *, polite: bool = True) -> threading.Thread:
    """:func:`warm_imports` in a daemon thread, for a process that spends the
    meantime blocked on I/O (an RPC wait releases the GIL). Python's import
    locks make a module imported by both threads load once.

    ``polite`` (the default) runs it at the lowest CPU priority. A server
    must pass False: an import holds the GIL between bytecodes, and a
    nice-19 thread holding it while the kernel has it preempted (other
    processes busy on both cores) keeps every other thread of the process
    waiting, its health port included. That priority inversion made the
    sensitivity service miss a 1 s health deadline in 3 of 6 runs of
    tests/integration/security/test_starvation.py; at normal priority the
    GIL changes hands every 5 ms as usual."""
    target = _warm_politely if polite else warm_imports
    thread = threading.Thread(
        target=target, args=(tuple(modules),), name="bitmesh-warm-imports", daemon=True
    )
    thread.start()
    return thread
