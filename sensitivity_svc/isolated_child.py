"""The analysis child: loads a user's program file, checks the data and runs
the Hessian traces, under a memory cap, in a process of its own.

Started by :mod:`sensitivity_svc.isolated` (the service's side) with the
sandbox's allowlisted environment (:func:`bitmesh.models.sandbox.worker.
child_environment`: no ``BITMESH_*`` token or TLS path, no Redis URL), an
empty working directory and no GPU. Run as
``python -m sensitivity_svc.isolated_child --memory-bytes=N``.

Its input is one JSON line on stdin (the spec, the layers, the options, the
settings) and a file of the batches written by the service with
``torch.save`` and read here ``weights_only`` (tensors, nothing else). Its
output is JSON lines on a private copy of stdout (file descriptor 1 itself
goes to stderr, so nothing the program prints can forge a line):
``{"progress": {...}}`` per running estimate, then one
``{"ok": true, "report": {...}}`` or a failure
(:func:`bitmesh.models.sandbox.protocol.failure`).

Memory: ``RLIMIT_AS`` is first set at the address space after the imports
plus ``--memory-bytes`` (``BITMESH_ANALYSIS_MEMORY_BYTES``), which bounds
the load; once the model is loaded the analysis's own estimate
(:func:`sensitivity_svc.analysis.estimate_memory`, from a one-sample probe)
is known, and the soft limit is lowered to what is mapped then plus twice
that estimate and a fixed slack (threads, allocator arenas), never above the
cap. A forward that allocates far more at the batch size than at the probe's
one sample is then denied there, and reported as RESOURCE_EXHAUSTED.

The service kills this process to cancel it; should the service itself die,
the closed stdin ends it too (a watcher thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from bitmesh.models.sandbox.child import _address_space, _is_allocation_failure, reply_stream
from bitmesh.models.sandbox.protocol import failure

#: Address space past twice the estimate: thread stacks (the analysis's
#: workers, torch's and autograd's: 13 threads), malloc's arenas (two, see
#: sensitivity_svc.isolated), oneDNN's scratch. A digits_cnn analysis mapped
#: 60 MiB past the tightening point with two arenas, 870 MiB with glibc's
#: default of one 64 MiB arena per thread.
SLACK_BYTES = 512 * 1024**2
#: Headroom over the estimate (tested within 15-60 % of the measured peak).
ESTIMATE_HEADROOM = 2.0
#: Least time between two progress lines of a running (not done) estimate.
PROGRESS_INTERVAL_S = 0.1


def _memory_failure(memory_bytes: int, what: str) -> str:
    return failure(
        "RESOURCE_EXHAUSTED",
        f"{what} needed more memory than the analysis child may use "
        f"(BITMESH_ANALYSIS_MEMORY_BYTES={memory_bytes}, and twice the analysis's own "
        "estimate): give a smaller batch_size or input shape, or raise the setting",
    )


def _watch_stdin() -> None:
    """End the process when its stdin closes (the service died or let it go)."""
    while sys.stdin.buffer.read(1 << 16):
        pass
    os._exit(3)


def _warm_up() -> None:
    """Export, save and load a one-layer program of bitmesh's own: what a
    first ``torch.export.load`` initialises besides its imports (3.7 s of a
    first load on the busy 2-core machine, 0.4 s after this, which took 1.8 s;
    one run each), done before the request arrives (the service keeps a spare child
    started ahead) and before the memory cap is measured."""
    import tempfile

    import torch

    from bitmesh.models.loading import load_model
    from bitmesh.models.spec import ModelSpec

    with torch.random.fork_rng(devices=[]):  # the request's seed alone decides
        program = torch.export.export(
            torch.nn.Linear(2, 2),
            (torch.zeros(2, 2),),
            dynamic_shapes=({0: torch.export.Dim("n")},),
        )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "warm.pt2")
        torch.export.save(program, path)
        load_model(
            ModelSpec(source="exported_program", name_or_path=path, input_shape=(2,), num_classes=2)
        )


def _tighten(estimate_total: int, ceiling: int) -> None:
    """Lower the soft address-space limit to what the estimate says is needed."""
    wanted = _address_space() + int(ESTIMATE_HEADROOM * estimate_total) + SLACK_BYTES
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = min(wanted, ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling))
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _analyse(request: dict[str, Any], memory_bytes: int, ceiling: int, out: TextIO) -> str:
    """The report of ``request`` as a reply line (the work of this process)."""
    import torch
    import torch.nn.functional as F

    from bitmesh.errors import ResourceExhausted
    from bitmesh.formats import parse_option
    from bitmesh.models.layers import LayerProfile
    from bitmesh.models.loading import load_model
    from bitmesh.models.sandbox.table import spec_from_json
    from sensitivity_svc.analysis import (
        SensitivitySettings,
        _resolve_layers,
        _size,
        analyse,
        estimate_memory,
        validate_data,
    )
    from sensitivity_svc.hutchinson import LayerTrace
    from sensitivity_svc.report import SensitivityReport

    batches = [
        (inputs, targets) for inputs, targets in torch.load(request["batches"], weights_only=True)
    ]
    # Gone from the pod's small /tmp at once, whatever ends this child later
    # (a SIGKILL of the service leaves no temporary folder to clean then).
    Path(request["batches"]).unlink(missing_ok=True)
    layers = [
        LayerProfile(**{**item, "weight_shape": tuple(item["weight_shape"])})
        for item in request["layers"]
    ]
    options = [parse_option(key) for key in request["options"]]
    settings = SensitivitySettings(**request["settings"])
    torch.manual_seed(int(request["seed"]))  # as jobs.prepare does before its load
    model = load_model(spec_from_json(request["spec"]))
    weights = [w for _, w in _resolve_layers(model, batches, layers)]
    need = estimate_memory(model, batches, weights, settings)
    if need.total > memory_bytes:
        raise ResourceExhausted(
            f"the analysis needs about {_size(need.total)}, more than the analysis child may "
            f"use (BITMESH_ANALYSIS_MEMORY_BYTES={memory_bytes}): activations "
            f"{_size(need.activations)}, weights and products {_size(need.parameters)}, "
            f"sketch {_size(need.sketch)}; give a smaller batch_size or raise the setting"
        )
    _tighten(need.total, ceiling)
    validate_data(model, F.cross_entropy, batches)

    if request.get("mode") == "price":
        from sensitivity_svc.jobs import price_options

        stored = SensitivityReport.from_dict(request["stored"])
        priced = price_options(stored, layers, model, options)
        return json.dumps({"ok": True, "report": priced.to_dict()})

    last = [0.0]

    def progress(stage: str, estimate: LayerTrace) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL_S and not estimate.done:
            return
        last[0] = now
        line = {"stage": stage, **estimate.__dict__}
        out.write(json.dumps({"progress": line}) + "\n")
        out.flush()

    report = analyse(model, batches, layers, options, settings, progress)
    return json.dumps({"ok": True, "report": report.to_dict()})


def serve(memory_bytes: int, replies: TextIO) -> None:
    """Read the one request, answer it, exit."""
    # Everything a load and an analysis import, imported before the cap is
    # measured (the cap is added to what is mapped then, as in the sandbox).
    import torch
    import torch._dynamo
    import torch._export.serde.serialize
    import torch.export
    import torch.fx.experimental.symbolic_shapes

    import bitmesh.models.loading  # noqa: F401
    import sensitivity_svc.analysis
    import sensitivity_svc.report  # noqa: F401
    from bitmesh.errors import BitmeshError

    _warm_up()
    ceiling = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, resource.RLIM_INFINITY))
    line = sys.stdin.readline()
    if not line:  # a spare the service let go (it stopped, or died) before any request
        os._exit(0)
    threading.Thread(target=_watch_stdin, daemon=True).start()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    try:
        reply = _analyse(json.loads(line), memory_bytes, ceiling, replies)
    except BitmeshError as exc:
        if _is_allocation_failure(exc):
            reply = _memory_failure(memory_bytes, "the analysis")
        else:
            reply = failure(exc.status_name, exc.message)
    except Exception as exc:  # the program's own failure: the request's fault
        if _is_allocation_failure(exc):
            reply = _memory_failure(memory_bytes, "the model's forward")
        else:
            reply = failure(
                "INVALID_ARGUMENT",
                f"the model failed while being analysed: {type(exc).__name__}: {exc}",
            )
    replies.write(reply + "\n")
    replies.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    replies = reply_stream()
    serve(args.memory_bytes, replies)
    replies.close()
    os._exit(0)  # no interpreter teardown: nothing left to flush but the reply


if __name__ == "__main__":
    main()
