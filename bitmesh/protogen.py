"""Generate the Python stubs in ``bitmesh/v1`` from ``protos/``.

The stubs are committed so that an install needs no grpcio-tools, and
``tests/unit/test_protos_current.py`` regenerates them into a temporary
folder and fails when the committed files differ (stale stubs).
Run: ``python -m bitmesh.protogen``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PACKAGE_DIR = Path("bitmesh") / "v1"


def proto_files() -> list[Path]:
    """All .proto files of the current API version, sorted for stable output."""
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run grpcio-tools' protoc into ``out_root``; return the files written.

    protoc runs in a child process: grpc_tools bundles its own libprotobuf,
    which aborts the process when OR-Tools' copy is already loaded.
    """
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-c",
        "import sys, pathlib, grpc_tools; from grpc_tools import protoc; "
        "inc = pathlib.Path(grpc_tools.__file__).parent / '_proto'; "
        "sys.exit(protoc.main(['protoc', f'-I{inc}'] + sys.argv[1:]))",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed: {done.stderr}")
    return sorted((out_root / PACKAGE_DIR).glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copy(path, REPO_ROOT / PACKAGE_DIR / path.name)


if __name__ == "__main__":
    main()
