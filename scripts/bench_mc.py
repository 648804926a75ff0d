#!/usr/bin/env python
"""Benchmark Monte-Carlo dropout on the seed model and two small CNNs, in one run.

Converts ``models/seed_model.keras`` with the CLI (as the main job does) into a
temporary folder, then runs ``spatialdrop-onnx bench --mc --seed-model ...``: for
each model, N=32 samples (1, 8, 64 and 512 token sequences for the seed model, 1
and 128 images for the CNNs) as N ``session.run`` calls from Python vs one call of
the MC model (batch folding and Loop) vs one call of the source on N x the batch,
with peak memory, what ``--strategy auto`` builds and the goals met. Every other
argument goes to ``bench --mc`` (a leading ``--`` is accepted and dropped), e.g.
``--runs 3 --repeat 11`` for ranges over three runs, or ``--json``.

    .venv/bin/python scripts/bench_mc.py [--runs 3] [--repeat 11] [--sequences 1,512] [--json]
    .venv/bin/python scripts/bench_mc.py --help     # this text and bench's options
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    extra = argv[1:] if argv[:1] == ["--"] else list(argv)
    if any(arg in ("-h", "--help") for arg in extra):
        print(__doc__.strip())
        print("\nOptions of bench (--mc and --seed-model are set by this script):\n")
        return subprocess.run([sys.executable, "-m", "spatialdrop_onnx", "bench", "--help"],
                              check=False).returncode
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
