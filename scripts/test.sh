#!/usr/bin/env bash
# The test command: set up everything, lint, type-check, run the whole suite.
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -m unit    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

echo "== ruff (lint + format)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (bitmesh/, solver_svc/)"
.venv/bin/mypy bitmesh solver_svc

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
echo "== pytest (REDIS_URL=$REDIS_URL)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
