"""The sandbox process: loads, probes and describes model files, nothing else.

Started by :mod:`bitmesh.models.sandbox.worker` with an allowlisted
environment (no tokens, no TLS paths, no Redis URL), an empty temporary
working directory and no GPU. It imports torch once, then caps itself:

- memory: ``RLIMIT_AS`` at its address space after the imports plus the
  model's budget (``--memory-bytes``). The budget is added to the measured
  size rather than set absolute because importing torch maps ~3.5 GiB of
  address space (mostly shared libraries, under 1 GiB resident, more or
  less by build), which an absolute cap would spend on mappings;
- CPU: before each request the soft ``RLIMIT_CPU`` is set to the seconds
  used so far plus the request's ``cpu_seconds``, so the cap is per request
  in a long-lived process; past it the kernel ends the process (SIGXCPU).

The service enforces the wall-clock limit and restarts the process after
any kill. Replies are JSON lines on a private copy of stdout; file
descriptor 1 itself goes to stderr, so nothing the program prints can forge
a reply. Run as ``python -m bitmesh.models.sandbox.child``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any, TextIO

from bitmesh.models.sandbox.protocol import failure

#: Replies remembered per file identity (and options priced), so a ListLayers
#: then a StartAnalysis on one file load it once.
_MAX_TABLES = 16


def _address_space() -> int:
    """This process's current address space in bytes (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _is_allocation_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        text = str(seen)
        if "can't allocate memory" in text or "out of memory" in text.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _identity(data: dict[str, Any]) -> tuple[Any, ...]:
    paths = [p for p in (data.get("weights_path"), data.get("name_or_path")) if p]
    stats: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    return (json.dumps(data, sort_keys=True), tuple(stats))


def _answer(
    data: dict[str, Any],
    memory_bytes: int,
    tables: dict[tuple[Any, ...], str],
    error_keys: list[str] | None = None,
) -> str:
    """The reply to one request: the table of ``data``'s model and, when
    ``error_keys`` (option keys) are given, its weight errors per layer and
    option, which read the program's weights (proxy NAS's budget problem)."""
    from bitmesh.errors import BitmeshError
    from bitmesh.models.sandbox.table import describe, spec_from_json, weight_errors

    key = (*_identity(data), None if error_keys is None else tuple(error_keys))
    if key in tables:
        return tables[key]
    try:
        spec = spec_from_json(data)
        table = describe(spec)
        answer: dict[str, Any] = {"ok": True, "table": table.to_json()}
        if error_keys is not None:
            from bitmesh.formats import parse_option

            options = [parse_option(k) for k in error_keys]
            answer["weight_errors"] = weight_errors(spec, table.layers, options)
    except BitmeshError as exc:
        if _is_allocation_failure(exc):
            return _memory_failure(memory_bytes)
        return failure(exc.status_name, exc.message)
    except Exception as exc:  # the program's own failure: the request's fault
        if _is_allocation_failure(exc):
            return _memory_failure(memory_bytes)
        return failure(
            "INVALID_ARGUMENT", f"the model failed to load or run: {type(exc).__name__}: {exc}"
        )
    reply = json.dumps(answer)
    if len(tables) >= _MAX_TABLES:
        tables.clear()
    tables[key] = reply
    return reply


def _error_keys(request: dict[str, Any]) -> list[str] | None:
    """The request's option keys to price (None: a table only), bounded."""
    from bitmesh.models.sandbox.table import MAX_ERROR_OPTIONS

    keys = request.get("weight_errors")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TypeError("weight_errors must be a list of option keys")
    if len(keys) > MAX_ERROR_OPTIONS:
        raise ValueError(f"more than {MAX_ERROR_OPTIONS} options to price")
    return keys


def _memory_failure(memory_bytes: int) -> str:
    return failure(
        "RESOURCE_EXHAUSTED",
        f"loading or running the model needs more memory than BITMESH_SANDBOX_MEMORY_BYTES="
        f"{memory_bytes}: give a smaller model or input shape, or raise the setting",
    )


def serve(memory_bytes: int, replies: TextIO) -> None:
    """Answer requests from stdin until it closes."""
    # Everything a first load imports, imported before the caps and the
    # ready line, so no request's wall clock pays it: torch.export.load pulls
    # in dynamo, sympy and the serializer (~1,000 modules, 20 s of a 2-core
    # machine under load against 1-2 s for the load itself).
    import torch
    import torch._dynamo
    import torch._export.serde.serialize
    import torch.export
    import torch.fx.experimental.symbolic_shapes

    import bitmesh.models.layers
    import bitmesh.models.loading
    import bitmesh.models.sandbox.table
    import bitmesh.quant.fake_quant  # noqa: F401  (weight errors)

    torch.set_num_threads(1)
    resource.setrlimit(
        resource.RLIMIT_AS, (_address_space() + memory_bytes, resource.RLIM_INFINITY)
    )
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    tables: dict[tuple[Any, ...], str] = {}
    for line in sys.stdin:
        try:
            request = json.loads(line)
            used = resource.getrusage(resource.RUSAGE_SELF)
            spent = int(used.ru_utime + used.ru_stime) + 1
            limit = spent + max(1, int(request["cpu_seconds"]))
            resource.setrlimit(resource.RLIMIT_CPU, (limit, resource.RLIM_INFINITY))
            reply = _answer(request["spec"], memory_bytes, tables, _error_keys(request))
        except (ValueError, KeyError, TypeError) as exc:
            reply = failure("INVALID_ARGUMENT", f"malformed sandbox request: {exc}")
        replies.write(reply + "\n")
        replies.flush()


def reply_stream() -> TextIO:
    """This process's stdout as the replies' own stream, and fd 1 and
    ``sys.stdout`` pointed at stderr from now on, so that nothing the
    model's code prints can pass for a reply."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.memory_bytes, reply_stream())


if __name__ == "__main__":
    main()
