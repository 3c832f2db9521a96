"""A per-machine cache of derived arrays (``.npz``, never pickled).

Why: the digits splits come from scikit-learn, whose import alone costs
about 3.7 s of CPU (scipy included) in every process that loads them: each
Celery worker, each service, each test process. The split itself is a pure
function of the scikit-learn release and our fixed split parameters, so it
is computed once per machine and later processes read a few hundred KB.

The cache lives under ``$XDG_CACHE_HOME/bitmesh/arrays`` (``~/.cache`` by
default). Writes are atomic (a temporary file renamed into place), so
concurrent processes never read a half-written file; a missing, unreadable
or read-only cache only costs the recomputation.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitmesh" / "arrays"


def cached_arrays(key: str, compute: Callable[[], Arrays]) -> Arrays:
    """``compute()``'s arrays, read from the cache entry ``key`` when present.

    ``key`` must name every input the arrays depend on (versions included).
    """
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError):
        pass  # absent or unreadable: compute it
    arrays = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".npz")
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as exc:
        log.info("array cache %s not written (%s); recomputing next time", path, exc)
    return arrays
