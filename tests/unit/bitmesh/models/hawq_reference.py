"""Read HAWQ-V3's ResNet tables (the solver package's copy) and map their layer names."""

from __future__ import annotations

import json
import re
from typing import Any

from solver_svc.hawq import default_reference_dir

HAWQ_DIR = default_reference_dir()

_NAME = re.compile(r"stage(\d+)\.unit(\d+)\.quant_(convbn(\d+)|identity_convbn)")


def load_reference(model: str) -> dict[str, Any]:
    path = HAWQ_DIR / f"{model}.json"
    assert path.is_file(), f"HAWQ-V3 reference data missing: {path}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def torchvision_name(hawq_name: str) -> str:
    """stage{s}.unit{u}.quant_convbn{k} -> layer{s}.{u-1}.conv{k};
    quant_identity_convbn -> layer{s}.{u-1}.downsample.0."""
    match = _NAME.fullmatch(hawq_name)
    assert match, hawq_name
    stage, unit, _, conv = match.groups()
    suffix = f"conv{conv}" if conv else "downsample.0"
    return f"layer{stage}.{int(unit) - 1}.{suffix}"
