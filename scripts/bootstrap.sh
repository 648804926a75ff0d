#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the package
# (native kernel built by the install) and all extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build;
# this version is the CPU build this project's machines carry.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[all]"
echo "bootstrap: ready (.venv)"
