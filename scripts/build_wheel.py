#!/usr/bin/env python
"""Build the portable binary wheel, prove its platform tag, and smoke-test it without a compiler.

1. ``pip wheel . --no-deps`` builds ``spatialdrop_onnx-<v>-py3-none-linux_<arch>.whl``
   (one wheel per platform for every Python 3: the kernel links neither libpython
   nor onnxruntime).
2. ``auditwheel show`` must say the wheel is consistent with ``--plat`` (default
   ``manylinux_2_28_x86_64``, onnxruntime's own baseline) or an older tag; the
   wheel is then retagged with ``wheel tags``.
3. The wheel is installed into a fresh virtual environment whose PATH holds no
   compiler and no npm (its dependencies come from this environment, read-only),
   and a SpatialDropout session runs there with the native kernel.

    .venv/bin/python scripts/build_wheel.py [--out dist] [--plat manylinux_2_28_x86_64]

Exits non-zero with one line saying which step failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMOKE = r"""
import sys
import numpy as np
import onnx
import spatialdrop_onnx as sd
from onnx import TensorProto, helper as oh

assert sys.argv[1] in sd.__file__, f"imported {sd.__file__}, not the wheel"
node = oh.make_node("SpatialDropout", ["x", "r", "t"], ["y"], domain=sd.DOMAIN,
                    shared_axes=[2, 3])
graph = oh.make_graph([node], "g",
    [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 3, 3]),
     oh.make_tensor_value_info("r", TensorProto.FLOAT, []),
     oh.make_tensor_value_info("t", TensorProto.BOOL, [])],
    [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8, 3, 3])])
model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17),
                                            oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])
session = sd.inference_session(model)            # the native kernel, no function body
x = np.random.default_rng(0).random((4, 8, 3, 3)).astype(np.float32) + 1
y = session.run(None, {"x": x, "r": np.array(0.5, np.float32), "t": np.array(True)})[0]
kept = (y != 0).all(axis=(2, 3))
assert ((y == 0).all(axis=(2, 3)) | kept).all(), "a feature map was partly dropped"
assert 0 < kept.sum() < kept.size
print("wheel smoke test: native kernel ran,", int(kept.sum()), "of", kept.size, "maps kept")
"""


class StepFailed(Exception):
    pass


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)  # noqa: S603
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise StepFailed(f"{' '.join(map(str, command[:4]))} ... failed:\n" + "\n".join(tail))
    return result


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("spatialdrop_onnx-*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), "-q"])
    (wheel,) = out.glob("spatialdrop_onnx-*.whl")
    return wheel


def check_platform(wheel: Path, wanted: str) -> Path:
    """``auditwheel show`` must allow ``wanted``; retag the wheel to it."""
    shown = run([sys.executable, "-m", "auditwheel", "show", str(wheel)]).stdout
    found = re.search(r'platform tag: "(manylinux_(\d+)_(\d+)_\w+)"', shown)
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", wanted)
    if found is None or match is None:
        raise StepFailed(f"auditwheel did not name a manylinux tag:\n{shown}")
    have = (int(found.group(2)), int(found.group(3)))
    need = (int(match.group(1)), int(match.group(2)))
    if have > need:
        raise StepFailed(f"the wheel needs {found.group(1)}, newer than {wanted}:\n{shown}")
    print(f"auditwheel: consistent with {found.group(1)} (<= {wanted})")
    run([sys.executable, "-m", "wheel", "tags", "--remove", "--platform-tag", wanted,
         str(wheel)])
    (tagged,) = wheel.parent.glob(f"spatialdrop_onnx-*-py3-none-{wanted}.whl")
    return tagged


def smoke_test(wheel: Path) -> None:
    """Install into a fresh venv with no compiler or npm on PATH and run the kernel."""
    with tempfile.TemporaryDirectory(prefix="spatialdrop-wheel-") as folder:
        venv = Path(folder) / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        python = venv / "bin" / "python"
        site = Path(run([str(python), "-c", "import sysconfig; "
                         "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
        # Dependencies (onnx, onnxruntime, numpy, ...) from this environment, read-only:
        # a plain path entry, so this environment's own .pth hooks do not run there.
        (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        env = {"PATH": str(venv / "bin"), "HOME": folder, "PYTHONNOUSERSITE": "1"}
        for tool in ("gcc", "g++", "cc", "c++", "cmake", "npm"):
            if shutil.which(tool, path=env["PATH"]):
                raise StepFailed(f"{tool} is on the smoke test's PATH")
        run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
             "--target", str(site), str(wheel)])
        result = run([str(python), "-c", SMOKE, str(site)], env=env, cwd=folder)
        print(result.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--plat", default="manylinux_2_28_x86_64")
    args = parser.parse_args()
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    try:
        wheel = check_platform(build(args.out), args.plat)
        smoke_test(wheel)
    except StepFailed as err:
        print(f"build_wheel: {err}", file=sys.stderr)
        return 1
    print(f"built {wheel.relative_to(ROOT) if wheel.is_relative_to(ROOT) else wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
