#!/usr/bin/env bash
# The demo behind `make demo`: tiny random weights, the real code paths end to end, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/demo}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
start=$(date +%s)
"$PY" -m dsd demo --out "$OUT"
echo "demo finished in $(( $(date +%s) - start ))s; outputs under $OUT"
