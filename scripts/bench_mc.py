#!/usr/bin/env python
"""Benchmark Monte-Carlo dropout on the seed model and two small CNNs, in one run.

Converts ``models/seed_model.keras`` with the CLI (as the main job does) into a
temporary folder, then runs ``spatialdrop-onnx bench --mc --seed-model ...``: for
each model, N=32 samples (512 token sequences for the seed model, 128 images for
the CNNs) as N ``session.run`` calls from Python vs one call of the MC model,
batch folding and Loop, with peak memory. Arguments after ``--`` go to
``bench --mc`` (e.g. ``-- --json``).

    .venv/bin/python scripts/bench_mc.py [-- --samples 32 --repeat 7 --json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    with tempfile.TemporaryDirectory() as scratch:
        seed = Path(scratch) / "seed_model.onnx"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        convert = [sys.executable, "-m", "spatialdrop_onnx", "convert",
                   str(ROOT / "models" / "seed_model.keras"), "-o", str(seed), "-q"]
        done = subprocess.run(convert, env=env, check=False)
        if done.returncode != 0:
            print(f"bench_mc: converting the seed model failed (exit {done.returncode})",
                  file=sys.stderr)
            return done.returncode
        bench = [sys.executable, "-m", "spatialdrop_onnx", "bench", "--mc",
                 "--seed-model", str(seed), *extra]
        return subprocess.run(bench, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
