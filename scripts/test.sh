#!/usr/bin/env bash
# The test command: set up everything, lint, type-check, run the whole suite.
#   ./scripts/test.sh            # everything, in BITMESH_TEST_WORKERS (2) processes
#   ./scripts/test.sh -m unit    # extra arguments go to pytest
#   BITMESH_TEST_WORKERS=0 ./scripts/test.sh   # one process (pytest-xdist off)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

# The per-machine caches, filled once while ruff and mypy run: the solver's
# numba kernels (17 s of CPU on a fresh clone, into __pycache__), the
# digits splits and torchvision's model names (bitmesh/data/array_cache.py).
# Otherwise every test process and service started before a cache exists
# fills it again.
.venv/bin/python -c "
from solver_svc.kernels import warm_up
from bitmesh.data.datasets import DatasetSpec, load_dataset
from bitmesh.models.loading import available_architectures
warm_up()
load_dataset(DatasetSpec(kind='digits'))
available_architectures()
" &
kernels=$!

echo "== ruff (lint + format)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (bitmesh/ and every service)"
.venv/bin/mypy bitmesh solver_svc sensitivity_svc trainer_svc proxy_nas_svc

wait "$kernels"

# Two processes on two cores: measured 1.4x faster than one (each xdist
# worker starts a Redis of its own and runs torch on one thread; see
# tests/conftest.py). Files stay whole on one worker (module-scoped meshes)
# and are handed out in collection order, the integration files (the longest)
# first: xdist's default order, most tests first, left the two-test mesh CLI
# file (about a minute) for the very end. One process (BITMESH_TEST_WORKERS=0)
# uses $REDIS_URL, or a private Redis started here.
workers=${BITMESH_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 0 ]; then
  parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
  echo "== pytest (workers: $workers, a private Redis each)"
else
  pidfile=$(mktemp)
  export BITMESH_REDIS_PIDFILE=$pidfile
  REDIS_URL=$(scripts/redis.sh)
  export REDIS_URL
  cleanup() {
    if [ -s "$pidfile" ] && [ -f "$(cat "$pidfile")" ]; then
      kill "$(cat "$(cat "$pidfile")")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  }
  trap cleanup EXIT
  echo "== pytest (REDIS_URL=$REDIS_URL, one process)"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
