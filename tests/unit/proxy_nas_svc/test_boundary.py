"""The proxy NAS service reaches the trainer through one module, and the two
services' Celery modules do not import each other.

Why: proxy NAS trials are trainer requests trained by the same workers, so the
two packages touch; ``trainer_svc.public`` is the whole contract between them
(docs/architecture.md). These guard it the way the lean-import test guards
torch: by reading the imports, not by trusting a docstring.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
PUBLIC = "trainer_svc.public"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (at any depth: lazy imports in functions,
    TYPE_CHECKING blocks), as (line, dotted name); ``from pkg import m`` of a
    top-level package yields ``pkg.m``: how ``from trainer_svc import jobs``
    is caught."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if "." in node.module:
                found.append((node.lineno, node.module))
            else:  # a package: what it imports from it are (likely) modules
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _trainer_imports_outside_public(package: Path) -> list[str]:
    """``file:line imports name`` for each trainer module but the public one."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        for line, name in _imported_modules(path):
            if name.split(".")[0] != "trainer_svc":
                continue
            if name != PUBLIC and not name.startswith(PUBLIC + "."):
                bad.append(f"{path.relative_to(package.parent)}:{line} imports {name}")
    return bad


def test_proxy_nas_imports_only_the_trainers_public_module() -> None:
    assert _trainer_imports_outside_public(REPO / "proxy_nas_svc") == []


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The check above can fail: each way of reaching past the contract is caught."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import trainer_svc.jobs\n"
        "from trainer_svc import loop\n"
        "from trainer_svc.public import execute\n"
        "if TYPE_CHECKING:\n"
        "    from trainer_svc.specs import TrainingRequest\n"
        "def f():\n"
        "    from trainer_svc.celery_app import make_celery\n"
    )
    bad = _trainer_imports_outside_public(package)
    assert [b.split(" imports ")[1] for b in bad] == [
        "trainer_svc.jobs",
        "trainer_svc.loop",
        "trainer_svc.specs",
        "trainer_svc.celery_app",
    ]


CYCLE_SCRIPT = """
import importlib, pkgutil, sys
import proxy_nas_svc
for info in pkgutil.iter_modules(proxy_nas_svc.__path__):
    importlib.import_module(f"proxy_nas_svc.{info.name}")
app_side = sorted(m for m in sys.modules if m in ("trainer_svc.celery_app", "trainer_svc.tasks"))
assert not app_side, f"importing proxy_nas_svc imported the trainer's Celery modules: {app_side}"
for name in list(sys.modules):
    if name.split(".")[0] in ("proxy_nas_svc", "trainer_svc"):
        del sys.modules[name]
import trainer_svc.celery_app, trainer_svc.tasks, trainer_svc.public
proxy = sorted(m for m in sys.modules if m.startswith("proxy_nas_svc"))
assert not proxy, f"importing the trainer's Celery modules imported proxy NAS: {proxy}"
print("OK")
"""


def test_no_celery_import_cycle_between_the_two_services(tmp_path: Path) -> None:
    """Every proxy NAS module imports without the trainer's Celery app or tasks
    (its trial task is a shared task, bound by whichever app imports it), and
    the trainer's app and tasks import no proxy NAS module (the worker finds
    ``proxy_nas_svc.tasks`` by autodiscovery when it starts)."""
    result = subprocess.run(
        [sys.executable, "-c", CYCLE_SCRIPT],
        cwd=REPO,
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            # The trainer's app module builds its (embedded) app at import.
            "BITMESH_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
