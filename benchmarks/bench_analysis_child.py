"""What running a program file's analysis in a child costs (issue 16).

Times a whole analysis over gRPC against a real sensitivity server on
loopback, StartAnalysis to the job's end, for digits_cnn (5 layers, digits,
one batch of 32, int4, 20 % target error, at most 30 samples) given

- ``program``: as a ``.pt2`` (since issue 16: the load, the data checks and
  the traces run in a child of the job, whose start imports torch);
- ``architecture``: as ``digits_cnn`` with the same weights (in the service,
  either way).

One analysis of each is run first and not counted (the sandbox child's
start, the service's first imports); then ``--repeats`` of each with
distinct seeds (so none is answered from the cache: the two share their
weights, so their cache keys), median reported. Runs
on any checkout, so the same script measures before and after. ``--gap``
waits before each analysis, as requests spaced apart would (the service's
spare child, started as an analysis takes the previous one, is then ready).
Prints each case, then one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds between analyses (a spare child's start)"
    )
    args = parser.parse_args()

    import torch

    from bitmesh.client import Client
    from bitmesh.models.digits_cnn import DigitsCNN
    from bitmesh.rpc.service_main import start_service
    from bitmesh.settings import Settings
    from bitmesh.v1 import common_pb2, sensitivity_pb2
    from sensitivity_svc.servicer import build

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = DigitsCNN().eval()
        torch.save(model.state_dict(), root / "digits.pt")
        program = torch.export.export(
            model, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        torch.export.save(program, root / "digits.pt2")
        models = {
            "program": common_pb2.ModelRef(
                exported_program=str(root / "digits.pt2"), input_shape=[1, 8, 8], num_classes=10
            ),
            "architecture": common_pb2.ModelRef(
                architecture="digits_cnn", weights=str(root / "digits.pt"), input_shape=[1, 8, 8]
            ),
        }
        settings = Settings(
            host="127.0.0.1", artifact_root=str(root / "art"), redis_url=None, metrics_port=0
        )
        running = start_service("sensitivity", build, settings, port=0)
        address = {"sensitivity": f"127.0.0.1:{running.port}"}
        figures: dict[str, float] = {}
        try:
            with Client(settings, addresses=address, timeout=600) as client:

                def analysis(name: str, seed: int) -> float:
                    request = sensitivity_pb2.StartAnalysisRequest(
                        model=models[name],
                        dataset=common_pb2.DatasetRef(
                            kind=common_pb2.DATASET_KIND_DIGITS, batch_size=32
                        ),
                        options=[
                            common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int4"))
                        ],
                        settings=sensitivity_pb2.EstimatorSettings(
                            target_relative_se=0.2, max_samples=30, seed=seed, num_batches=1
                        ),
                    )
                    time.sleep(args.gap)
                    started = time.perf_counter()
                    job = client.start_analysis(request)
                    for _ in client.watch_analysis(job.job_id, timeout=600):
                        pass
                    seconds = time.perf_counter() - started
                    result = client.get_analysis(job.job_id)
                    assert result.status.state == common_pb2.JOB_STATE_SUCCEEDED, result.status
                    assert not result.report.cached
                    return seconds

                # Distinct seeds per model too: the program and the
                # architecture have the same weights, so the same cache key.
                for offset, name in enumerate(models):
                    analysis(name, 1000 + offset)  # warm-up, not counted
                for offset, name in enumerate(models):
                    seeds = range(100 * offset + 1, 100 * offset + 1 + args.repeats)
                    times = [analysis(name, seed) for seed in seeds]
                    figures[name] = statistics.median(times)
                    print(f"{name}: " + ", ".join(f"{t:.2f}" for t in times) + " s")
        finally:
            running.stop(0)
    print("RESULT " + " ".join(f"{k}={v:.2f}s" for k, v in figures.items()))


if __name__ == "__main__":
    main()
