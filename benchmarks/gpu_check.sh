#!/usr/bin/env bash
# The GPU check of issue #12 in one command (about 6 minutes on one H100/H200; see benchmarks/gpu_check.py):
#   bash benchmarks/gpu_check.sh [--steps tests,train,bench,vllm]
# Uses $PYTHON (default python3), which must hold a CUDA build of torch. Python packages it lacks are installed
# into a private folder (not into that python): from .gpu/wheels when present (made by
# `python benchmarks/gpu_check.py --pack .gpu` on a machine with the full environment), else from PyPI.
# Writes results/benchmarks/gpu_{env,tests,train,ranking_step,vllm,check}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${TUNA_GPU_SITE:-/tmp/tuna-gpu-site}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: $PYTHON has no CUDA build of torch, or sees no GPU" >&2
  exit 2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PYTHON" benchmarks/gpu_check.py --missing)
if [ -n "$missing" ]; then
  echo "gpu_check: installing into $SITE: $missing"
  if [ -d .gpu/wheels ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" --find-links .gpu/wheels $missing
  else
    "$PYTHON" -m pip install -q --no-compile --target "$SITE" $missing
  fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
