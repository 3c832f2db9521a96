#!/usr/bin/env bash
# The main job: set up, start the mesh on loopback (embedded queue unless
# REDIS_URL is set; a running `bitmesh up` mesh is reused), then run the whole
# pipeline on the digits data and its small CNN under a BOPs budget:
# FP32 training -> Hessian sensitivity -> ILP at the budget -> proxy search of
# the QAT learning rate -> QAT with distillation -> ONNX export verified in
# onnxruntime. Prints where the report is (default ./bitmesh-report, or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
BM=.venv/bin/bitmesh
$BM up --detach
trap '[ "${BITMESH_KEEP_UP:-0}" = 1 ] || $BM down' EXIT
$BM status
$BM layers --model digits_cnn --options int4,int8,e4m3
$BM run --model digits_cnn --dataset digits --max-bops 16M --method lcpaq --out "${1:-bitmesh-report}"
