"""Stage results on disk, keyed by their inputs: a rerun skips finished stages.

Each stage's result is JSON under ``<out>/stages/<stage>-<key>.json`` where
the key hashes the stage's inputs (which include earlier stages' outputs), so
changing any input reruns that stage and everything after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def input_key(inputs: dict[str, Any]) -> str:
    """A short stable hash of JSON-able inputs."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCache:
    """A folder of finished stages; ``hits`` names those reused in this run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits: list[str] = []

    def _path(self, stage: str, inputs: dict[str, Any]) -> Path:
        return self.folder / f"{stage}-{input_key(inputs)}.json"

    def get(self, stage: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(stage, inputs)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a write cut short: run the stage again
        return data if isinstance(data, dict) else None

    def put(self, stage: str, inputs: dict[str, Any], result: dict[str, Any]) -> None:
        path = self._path(stage, inputs)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
        tmp.replace(path)

    def run(
        self, stage: str, inputs: dict[str, Any], compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The cached result, or ``compute()``'s (then stored)."""
        cached = self.get(stage, inputs)
        if cached is not None:
            self.hits.append(stage)
            return cached
        result = compute()
        self.put(stage, inputs, result)
        return result
