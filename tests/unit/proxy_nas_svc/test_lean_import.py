"""What runs without torch: the proxy NAS service, the trainer's service edge
(requests in, results out), a worker's start-up path.

Why it matters: every process that imports torch pays seconds of CPU (about
3 s here), and these only carry specs and ids. Torch is imported by the work
itself (a model to load or train).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import proxy_nas_svc.servicer, proxy_nas_svc.tasks, trainer_svc.tasks, trainer_svc.public
import proxy_nas_svc.convert, proxy_nas_svc.validate, trainer_svc.convert, trainer_svc.servicer
from bitmesh.rpc.convert_ml import dataset_spec_from_pb, model_spec_from_pb
from bitmesh.v1 import common_pb2
from trainer_svc.orphans import orphaned_jobs
from bitmesh.data.spec import DatasetSpec
from bitmesh.models.spec import ModelSpec

ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DatasetSpec(kind="image_folder", path="x", shape=(3, 32, 32), mean=(0.5,), std=(0.25,))
model_spec_from_pb(common_pb2.ModelRef(architecture="resnet18"))
dataset_spec_from_pb(common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS))
assert not [m for m, v in sys.modules.items() if v is not None and m.startswith("torch")]
print("OK")
"""


def test_the_proxy_service_the_trainer_edge_and_a_starting_worker_need_no_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_the_spec_modules_are_the_ones_the_torch_modules_use() -> None:
    from bitmesh.data import datasets, spec
    from bitmesh.models import loading
    from bitmesh.models import spec as model_spec
    from bitmesh.quant import range_estimators, range_spec

    assert datasets.DatasetSpec is spec.DatasetSpec
    assert loading.ModelSpec is model_spec.ModelSpec
    assert range_estimators.RangeEstimator is range_spec.RangeEstimator
    # Every name the spec accepts has an implementation, and no other exists.
    assert tuple(range_estimators._STATISTICS) == range_spec.ESTIMATOR_NAMES
