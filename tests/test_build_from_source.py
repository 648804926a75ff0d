"""Building the kernel from source without the ONNX Runtime headers ends in one short message.

The binary wheel needs nothing; from the sdist the build needs a compiler, CMake and the
headers (fetched with npm, or given by SPATIALDROP_ORT_INCLUDE_DIR /
SPATIALDROP_ORT_NPM_TARBALL). Here npm is made unavailable and the header cache empty, and
the CMake configure step of ops/ must fail saying what to do, not with a wall of output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

OPS = Path(__file__).resolve().parents[1] / "ops"


def test_no_npm_and_no_headers_is_one_actionable_message(tmp_path: Path) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed to build the kernel from source (and for this test)")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SPATIALDROP_ORT_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-cache")  # no cached headers
    done = subprocess.run(
        [cmake, "-S", str(OPS), "-B", str(tmp_path / "build"),
         "-DSPATIALDROP_NPM=SPATIALDROP_NPM-NOTFOUND"],  # as if npm were not installed
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode != 0
    message = done.stderr
    assert "npm was not found." in message
    for hint in ("Install npm", "SPATIALDROP_ORT_INCLUDE_DIR", "SPATIALDROP_ORT_NPM_TARBALL"):
        assert hint in message, message
    # Short: the reason and the three ways out, not the build log.
    assert len(message.strip().splitlines()) <= 16, message
