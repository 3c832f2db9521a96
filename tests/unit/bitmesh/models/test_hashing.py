"""model_hash and file_sha256: content-only, stable across processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.hashing import file_sha256, model_hash

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[4]


def _model(seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN()


def test_same_weights_same_hash_different_weights_different_hash() -> None:
    first, again, other = _model(0), _model(0), _model(1)
    assert model_hash(first) == model_hash(again)
    assert model_hash(first) != model_hash(other)
    assert len(model_hash(first)) == 64


def test_one_changed_value_changes_the_hash() -> None:
    model = _model(0)
    before = model_hash(model)
    with torch.no_grad():
        model.fc2.bias[3] += 1e-6
    assert model_hash(model) != before


def test_dtype_and_shape_are_part_of_the_hash() -> None:
    as_float = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        as_float.weight.zero_()
    as_half = nn.Linear(2, 2, bias=False).half()
    with torch.no_grad():
        as_half.weight.zero_()
    assert model_hash(as_float) != model_hash(as_half)
    wide, tall = nn.Linear(4, 1, bias=False), nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        wide.weight.zero_()
        tall.weight.zero_()
    assert model_hash(wide) != model_hash(tall)


def test_bfloat16_and_scalar_buffers_hash() -> None:
    model = _model(0).to(torch.bfloat16)  # num_batches_tracked stays a 0-d int64
    assert model_hash(model) == model_hash(_model(0).to(torch.bfloat16))


def test_stable_across_processes(tmp_path: Path) -> None:
    code = (
        "import torch\n"
        "from bitmesh.models.digits_cnn import DigitsCNN\n"
        "from bitmesh.models.hashing import model_hash\n"
        "torch.manual_seed(0)\n"
        "print(model_hash(DigitsCNN()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == model_hash(_model(0))


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # > 1 MiB: several chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFound):
        file_sha256(tmp_path / "missing")
    with pytest.raises(InvalidArgument):
        file_sha256(tmp_path)
