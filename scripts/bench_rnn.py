"""onnxruntime time per call of the seed model's inference form: tf2onnx's Loop vs the fused GRU.

Converts ``models/seed_model.keras`` with ``--strip`` twice — as ``convert`` writes it
(both GRUs fused into the ONNX ``GRU`` op) and with the fusion switched off (the
portable ``Loop``s) — checks both agree, then times ``session.run`` at several batch
sizes. The two forms take turns within each round; each round's figure is the median
of ``--calls`` calls; the table gives the median and range over the rounds.

Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_rnn.py [--batches 1 64 512]
[--rounds 5] [--calls 50] [--threads N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

SEED_MODEL = Path(__file__).resolve().parents[1] / "models" / "seed_model.keras"


def convert(out: Path, fused: bool) -> onnx.ModelProto:
    """The stripped seed model, with or without the fused RNN op."""
    from spatialdrop_onnx.converters import keras_convert

    if fused:
        keras_convert.convert_keras(SEED_MODEL, out, strip=True)
    else:
        with mock.patch.object(keras_convert, "fuse_keras_rnns", lambda *a, **k: []):
            keras_convert.convert_keras(SEED_MODEL, out, strip=True)
    return onnx.load(out)


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def per_call(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int) -> float:
    """Median seconds per call over ``calls`` calls (after two warm-up calls)."""
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        models = {name: convert(Path(folder) / f"{name}.onnx", name == "fused")
                  for name in ("loop", "fused")}
    census = {name: sorted({n.op_type for n in m.graph.node} & {"Loop", "GRU"})
              for name, m in models.items()}
    sessions = {name: session(m, args.threads) for name, m in models.items()}
    rows = []
    for batch in args.batches:
        tokens = np.random.default_rng(batch).integers(0, 10, (batch, 6)).astype(np.int32)
        feeds = {"tokens": tokens}
        outputs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}
        difference = float(np.abs(outputs["loop"] - outputs["fused"]).max())
        rounds: dict[str, list[float]] = {"loop": [], "fused": []}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                rounds[name].append(per_call(sess, feeds, args.calls))
        ratios = [a / b for a, b in zip(rounds["loop"], rounds["fused"], strict=True)]
        rows.append({"batch": batch, "max_abs_diff": difference,
                     **{f"{name}_ms": [round(1e3 * t, 4) for t in times]
                        for name, times in rounds.items()},
                     "speedup": [round(r, 2) for r in ratios]})
    if args.json:
        print(json.dumps({"ops": census, "threads": args.threads, "rows": rows}, indent=1))
        return 0
    print(f"ops: loop form {census['loop']}, fused form {census['fused']}; "
          f"intra-op threads {args.threads}; {args.rounds} rounds x {args.calls} calls")
    print("| sequences | Loop: ms per call (range) | fused GRU: ms per call (range) | "
          "speed-up (range) | max |diff| |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        loop, fused, speed = row["loop_ms"], row["fused_ms"], row["speedup"]
        print(f"| {row['batch']} | {statistics.median(loop):.3f} ({min(loop):.3f}–"
              f"{max(loop):.3f}) | {statistics.median(fused):.3f} ({min(fused):.3f}–"
              f"{max(fused):.3f}) | {statistics.median(speed):.1f}× ({min(speed):.1f}–"
              f"{max(speed):.1f}) | {row['max_abs_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
