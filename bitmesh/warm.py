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


def warm_in_background(modules: Iterable[str]) -> threading.Thread:
    """:func:`warm_imports` in a daemon thread, for a process that spends the
    meantime blocked on I/O (an RPC wait releases the GIL). Python's import
    locks make a module imported by both threads load once."""
    thread = threading.Thread(
        target=warm_imports, args=(tuple(modules),), name="bitmesh-warm-imports", daemon=True
    )
    thread.start()
    return thread
