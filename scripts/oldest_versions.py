#!/usr/bin/env python
"""CI job: the oldest version of every core dependency the metadata allows, and the core tests.

Reads the floors (``>=X``) of ``[project] dependencies`` and of the test tools in the
``dev`` extra from pyproject.toml and pins each to ``==X`` in a fresh virtual
environment; installs the built wheel there (``--no-deps``: nothing newer sneaks in); then
runs the tests that need no optional framework (TensorFlow, PyTorch, onnxslim) from a copy
of tests/, models/ and ops/, so the package under test is the installed wheel. A floor that does
not hold fails here.

    .venv/bin/python scripts/oldest_versions.py dist/spatialdrop_onnx-*.whl
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Test tools pinned at their floors too (from the dev extra).
TEST_TOOLS = ("pytest", "hypothesis", "onnxruntime-extensions", "openvino", "tract")
#: Test files that need an optional framework the oldest environment does not install.
NEEDS_FRAMEWORKS = ("test_keras_", "test_passes_keras", "test_passes_torch",
                    "test_passes_floor_mask", "test_torch_", "test_simplifiers")


def floors() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    dev = project["optional-dependencies"]["dev"]
    wanted += [r for r in dev if re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] in TEST_TOOLS]
    pins = []
    for requirement in wanted:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
        if found is None:
            raise SystemExit(f"oldest_versions: no plain floor in {requirement!r}")
        pins.append(f"{found.group(1)}=={found.group(2)}")
    return pins


def main() -> int:
    wheels = sys.argv[1:] or [str(p) for p in sorted((ROOT / "dist").glob("*.whl"))]
    if len(wheels) != 1:
        raise SystemExit("oldest_versions: give exactly one wheel (scripts/build_wheel.py)")
    pins = floors()
    print("oldest versions:", " ".join(pins), flush=True)
    with tempfile.TemporaryDirectory(prefix="spatialdrop-oldest-") as folder:
        work = Path(folder)
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "--disable-pip-version-check"]
        subprocess.run([*pip, *pins], check=True)
        subprocess.run([*pip, "--no-deps", wheels[0]], check=True)
        for name in ("tests", "models", "scripts", "ops"):
            shutil.copytree(ROOT / name, work / name)
        tests = sorted(str(p.relative_to(work)) for p in (work / "tests").glob("test_*.py")
                       if not p.name.startswith(NEEDS_FRAMEWORKS))
        env = {**os.environ, "CI": "true"}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider",
                               *tests], cwd=work, env=env, check=False)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
