#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the package
# (native kernel built by the install) and all extras. Safe to run again.
#
# Every version comes from requirements.lock (transitive ones included), so a dependency
# release cannot change what this installs. PIP_CONSTRAINT (not -c) also reaches pip's
# isolated build environment, which builds the native kernel. Refresh the lock with
# scripts/newest_versions.py --write-lock (see docs/dependencies.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/requirements.lock"

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

# torch first, pinned, and CPU only: a bare "torch" requirement (or this pin on a machine
# without a local CPU wheel) would pull a CUDA build and a dozen nvidia-* packages (GBs).
# Ask pip what it would install before installing anything.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  plan=$(.venv/bin/python -m pip install --quiet --dry-run --report - "torch==2.13.0")
  if .venv/bin/python -c '
import json, sys
names = [item["metadata"]["name"] for item in json.load(sys.stdin)["install"]]
sys.exit(any(name.startswith("nvidia-") for name in names))' <<<"$plan"; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  else
    echo "bootstrap: torch==2.13.0 would come as a CUDA build here (nvidia-* packages)." >&2
    echo "  Install the CPU build first, from PyTorch's CPU wheel index:" >&2
    echo "  .venv/bin/python -m pip install torch==2.13.0 --index-url <PyTorch CPU wheel index>" >&2
    echo "  then run this script again." >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install --quiet -e ".[all]"
echo "bootstrap: ready (.venv)"
