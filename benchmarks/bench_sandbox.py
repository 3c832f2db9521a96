"""What the model sandbox costs on the request paths that validate a model.

Times, for resnet18 at 3x32x32 (10 classes) as a ``.pt2`` program and as an
architecture name:

- ``list_layers``: ListLayers over gRPC against a real sensitivity server on
  loopback (the table of 21 layers x int8);
- ``prepare``: ``sensitivity_svc.jobs.prepare``, the validation StartAnalysis
  runs before it queues a job (one synthetic batch of 8).

Each is called ``--repeats`` times in one process: the first call is cold
(for a program: the sandbox child's start and torch.export's imports; before
the sandbox, those imports in the service), the rest warm (the median is
reported). Runs on any checkout, so the same script measures before and
after the sandbox. Prints each case, then one ``RESULT`` line with every figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc


def _export_resnet18(path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    program = torch.export.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, path)


def _timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds[0], statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    from bitmesh.models.spec import ModelSpec
    from bitmesh.rpc.service_main import start_service
    from bitmesh.settings import Settings
    from bitmesh.v1 import common_pb2, sensitivity_pb2, sensitivity_pb2_grpc
    from sensitivity_svc.jobs import prepare
    from sensitivity_svc.servicer import build

    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    program = work / "resnet18.pt2"
    _export_resnet18(program)
    settings = Settings(host="127.0.0.1", artifact_root=str(work / "root"), redis_url=None)
    server = start_service("sensitivity", build, settings, port=0)
    int8 = common_pb2.QuantOption(
        weight=common_pb2.NumericFormat(name="int8"),
        activation=common_pb2.NumericFormat(name="int8"),
    )
    refs = {
        "pt2": common_pb2.ModelRef(
            exported_program=str(program), input_shape=[3, 32, 32], num_classes=10
        ),
        "architecture": common_pb2.ModelRef(
            architecture="resnet18", input_shape=[3, 32, 32], num_classes=10
        ),
    }
    specs = {
        "pt2": ModelSpec(
            source="exported_program",
            name_or_path=str(program),
            input_shape=(3, 32, 32),
            num_classes=10,
        ),
        "architecture": ModelSpec(
            source="architecture", name_or_path="resnet18", input_shape=(3, 32, 32)
        ),
    }
    from bitmesh.data.spec import DatasetSpec
    from bitmesh.formats import parse_option

    dataset = DatasetSpec(kind="synthetic", shape=(3, 32, 32), num_classes=10)
    estimator = {"target_relative_se": 0.1, "max_samples": 4, "seed": 0, "num_batches": 1}
    figures: dict[str, float] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = sensitivity_pb2_grpc.SensitivityServiceStub(channel)
            for kind in ("pt2", "architecture"):
                request = sensitivity_pb2.ListLayersRequest(model=refs[kind], options=[int8])
                cold, warm = _timed(lambda r=request: stub.ListLayers(r, timeout=300), args.repeats)
                print(f"list_layers {kind}: cold {cold:.3f} s, warm {warm:.3f} s")
                figures |= {f"list_layers_{kind}_cold_s": cold, f"list_layers_{kind}_warm_s": warm}
                spec = specs[kind]
                cold, warm = _timed(
                    lambda s=spec: prepare(s, dataset, [parse_option("int8")], estimator, 8, False),
                    args.repeats,
                )
                print(f"prepare {kind}: cold {cold:.3f} s, warm {warm:.3f} s")
                figures |= {f"prepare_{kind}_cold_s": cold, f"prepare_{kind}_warm_s": warm}
    finally:
        server.stop(0)
    print("RESULT " + " ".join(f"{name}={value:.3f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
