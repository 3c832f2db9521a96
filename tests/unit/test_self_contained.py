"""Nothing in tests/, benchmarks/ or scripts/ reads a path outside the repository.

Why: the suite once read HAWQ-V3's data from ``../shared``, which a plain
clone does not have, so 32 tests failed for every new user. This scans the
source text for the ways a path escapes: ``Path(__file__)`` climbing above
the repository root (``parents[k]`` and ``.parent`` chains), relative ``../``
literals, and absolute paths into machine-specific folders. A line that
names such a path on purpose without reading it (a hostile input sent to a
server, a path inside a container image) says so with the marker
``# not read here``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "benchmarks", "scripts", ".ci")
SUFFIXES = {".py", ".sh", ".cfg", ".toml", ".ini", ".yaml", ".yml", ""}

#: ``Path(__file__)...parents[k]`` followed by any number of ``.parent``.
_CLIMB = re.compile(
    r"Path\(\s*__file__\s*\)(?:\.resolve\(\)|\.absolute\(\))?"
    r"(?P<steps>(?:\.parents\[\d+\]|\.parent)+)"
)
_STEP = re.compile(r"\.parents\[(\d+)\]|\.parent")
#: A relative path that leaves its folder: "../x", '..', os.pardir.
_PARENT_LITERAL = re.compile(r"""(?:["'`]|[\s=(])\.\.(?:/|["'`\s)])|os\.pardir""")
#: Absolute paths into folders that belong to one machine, not the project.
_MACHINE_PATH = re.compile(r"""(?<![\w.])/(?:work|home|root|mnt|srv|opt)/""")
_SHARED = re.compile(r"""shared/reference|["']shared["']""")
MARKER = "# not read here"


def levels_climbed(steps: str) -> int:
    """How many folders ``steps`` climbs from the file itself: ``.parent`` is
    one, ``.parents[k]`` is k + 1."""
    total = 0
    for match in _STEP.finditer(steps):
        total += int(match.group(1)) + 1 if match.group(1) is not None else 1
    return total


def escapes(relative: Path, text: str) -> list[str]:
    """Why the file at ``relative`` (inside the repository) names a path
    outside it; empty when it does not."""
    to_root = len(relative.parts)  # climbs from the file up to the root itself
    text = "\n".join("" if MARKER in line else line for line in text.split("\n"))
    reasons = []
    for match in _CLIMB.finditer(text):
        if levels_climbed(match.group("steps")) > to_root:
            reasons.append(f"{match.group(0)!r} climbs above the repository root")
    for pattern, what in (
        (_PARENT_LITERAL, "a relative '..' path"),
        (_MACHINE_PATH, "an absolute path into a machine's folders"),
        (_SHARED, "the shared/ folder beside the repository"),
    ):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            reasons.append(f"line {line}: {what} ({match.group(0).strip()!r})")
    return reasons


def scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def test_the_scanner_catches_each_way_out() -> None:
    here = Path("tests/unit/x/test_y.py")  # parents[3] is the root
    assert escapes(here, "ROOT = Path(__file__).resolve().parents[3]") == []
    assert escapes(here, "ROOT = Path(__file__).parent.parent.parent.parent") == []
    assert escapes(here, "ROOT = Path(__file__).resolve().parents[3].parent") != []
    assert escapes(here, "ROOT = Path(__file__).parent.parent.parent.parent.parent") != []
    assert escapes(here, 'DATA = ROOT / "../shared/reference/hawq-v3"') != []
    assert escapes(here, 'cd ".." && ls') != []
    assert escapes(here, 'open("/work/shared/METHODS.md")') != []
    assert escapes(here, 'ROOT.parent / "shared" / "reference"') != []
    # Ordinary text is not flagged: gRPC method names, /tmp, ellipses, ranges.
    ordinary = '"/bitmesh.v1.Solver/Solve" "/tmp/x" "wait..." "n=1..4" x[1:] /dev/null'
    assert escapes(here, ordinary) == []
    assert escapes(here, 'send("../../etc/passwd")  # not read here: hostile input') == []


def test_no_file_names_a_path_outside_the_repository() -> None:
    files = scanned_files()
    assert len(files) > 50, "the scan found too few files: wrong root?"
    this = Path(__file__).resolve()
    found = {
        str(path.relative_to(REPO_ROOT)): reasons
        for path in files
        if path != this
        and (reasons := escapes(path.relative_to(REPO_ROOT), path.read_text(errors="replace")))
    }
    assert not found, found
