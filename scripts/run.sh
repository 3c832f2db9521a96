#!/usr/bin/env bash
# The main job: set up, start the mesh on loopback (embedded queue unless
# REDIS_URL is set), show a model's layers and costs through it, and measure
# the digits CNN's per-layer sensitivity (Hessian traces with error bars and
# the Omega table) through the sensitivity service.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
BM=.venv/bin/bitmesh
$BM up --detach
trap '[ "${BITMESH_KEEP_UP:-0}" = 1 ] || $BM down' EXIT
$BM status
$BM layers --model digits_cnn --options int4,int8,e4m3
$BM layers --model resnet18 --options int4,int8
$BM sensitivity --model digits_cnn --dataset digits --formats int4,int8,e4m3
