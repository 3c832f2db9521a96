"""What starts without torch: the proxy NAS service, a worker's start-up path.

Why it matters: every process start that imports torch pays seconds of CPU
(about 3 s here), and the proxy NAS service and a Celery worker that has not
run a job yet only carry specs and ids. Torch is imported by the work itself.
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
import proxy_nas_svc.servicer, proxy_nas_svc.tasks, trainer_svc.tasks
from trainer_svc.orphans import orphaned_jobs
from bitmesh.data.spec import DatasetSpec
from bitmesh.models.spec import ModelSpec

ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DatasetSpec(kind="image_folder", path="x", shape=(3, 32, 32), mean=(0.5,), std=(0.25,))
assert not [m for m, v in sys.modules.items() if v is not None and m.startswith("torch")]
print("OK")
"""


def test_the_proxy_service_and_a_starting_worker_need_no_torch() -> None:
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


def test_the_spec_modules_are_the_ones_the_loaders_export() -> None:
    from bitmesh.data import datasets, spec
    from bitmesh.models import loading
    from bitmesh.models import spec as model_spec

    assert datasets.DatasetSpec is spec.DatasetSpec
    assert loading.ModelSpec is model_spec.ModelSpec
