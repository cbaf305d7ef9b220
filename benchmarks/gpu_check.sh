#!/usr/bin/env bash
# The ready GPU check (benchmarks/gpu_check.py): run unchanged on a lent GPU machine,
#   bash benchmarks/gpu_check.sh            # on CUDA, at most about 5 minutes on one GPU
#   bash benchmarks/gpu_check.sh --cpu      # the same checks on the CPU at small sizes (make test runs this)
# Prints one JSON line last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
