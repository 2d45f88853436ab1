#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): on a CUDA machine with only this repository,
#   bash benchmarks/gpu_check.sh               -> benchmarks/results_gpu.md (~5-8 min)
#   bash benchmarks/gpu_check.sh --cpu-smoke   -> the same code paths at tiny sizes on a CPU (< 1 min)
# It uses .venv when there is one (make setup), else the python on PATH; if that python lacks the
# requirements it installs them from requirements.txt (torch pinned first, as the Makefile does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import torch, transformers, triton, pytest" >/dev/null 2>&1; then
  echo "[gpu_check] installing the requirements (torch==2.13.0 first)"
  "$PY" -m pip install -q torch==2.13.0 && "$PY" -m pip install -q -r requirements.txt
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the repository's packages, installed or not
# the smoke run takes the kernel paths through Triton's interpreter, which must be on before triton is imported
for arg in "$@"; do [ "$arg" = "--cpu-smoke" ] && export TRITON_INTERPRET=1; done
exec "$PY" -m benchmarks.gpu_check "$@"
