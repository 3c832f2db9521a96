#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv/.
# Fast on a second run: the environment is reused while requirements.lock and
# pyproject.toml are unchanged (their hash is stored in .venv/.bootstrap-hash);
# pip's cache keeps a rebuild quick. Correct on the first run: everything is
# installed from the lock file, then bitmesh itself (editable, no deps).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.bootstrap-hash 2>/dev/null || true)
if [ "$want" = "$have" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

echo "bootstrap: installing the environment into .venv/ (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# --no-compile: byte-compiling every module of torch and its CUDA wheels up
# front costs about a minute of CPU; Python compiles what is imported, once.
.venv/bin/python -m pip install --quiet --no-compile -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > .venv/.bootstrap-hash
echo "bootstrap: done" >&2
