#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) as one call on the NVIDIA machine that is sometimes lent:
# it has a CUDA build of torch, numpy, typer and rich, but no paddle and no package registry, and
# at most 64 MiB travels with the working tree. The workers need multiprocess and dill: bring their
# wheels in .whl/ (git-ignored), made on a machine with a registry by
#   pip download multiprocess dill -d .whl
# (multiprocess's wheels are per Python version: add --python-version 3.N --only-binary=:all: for
# the GPU machine's Python). Nothing else is installed. Runs on a CPU-only machine too, where
# every GPU part says it was skipped and why. Exit 0: all that could run passed; 1: a check failed.
# Usage: bash benchmarks/gpu_check.sh [--require-cuda]
set -euo pipefail
cd "$(dirname "$0")/.."

# $PYTHON, else this checkout's .venv, else the machine's own python (the GPU machine's CUDA torch)
py=${PYTHON:-python}
if [[ -z ${PYTHON:-} && -x .venv/bin/python ]]; then
  py=.venv/bin/python
fi

if ! "$py" -c "import multiprocess, dill" 2>/dev/null; then
  if [[ ! -d .whl ]]; then
    echo "gpu_check: multiprocess and dill are missing and there is no .whl/ folder;" \
         "make one where a registry is reachable: pip download multiprocess dill -d .whl" >&2
    exit 1
  fi
  "$py" -m pip install --no-index --find-links .whl multiprocess dill
fi

# under the 10 minutes one call may take on the GPU machine, with time left to report
PYTHONPATH=$PWD exec timeout 540 "$py" benchmarks/gpu_check.py "$@"
