"""The main job: convert the seed model with the CLI, check it, and run Monte-Carlo dropout.

1. ``spatialdrop-onnx convert models/seed_model.keras -o <dir>/seed_model.onnx --json``
2. inference (``training_mode`` false) in onnxruntime — through the portable
   function body and, when built, the native kernel — must equal Keras
   ``model.predict`` (max abs diff <= 1e-5) with identical predicted tokens;
3. Monte-Carlo dropout: ``training_mode`` true, several stochastic passes per
   sequence; the spread of the samples (per-token variance) is the model's
   uncertainty, the reason to keep dropout in an ONNX model.

Exits non-zero if the conversion or the equality check fails.

Run: ``.venv/bin/python models/main_job.py [--out-dir DIR] [--samples N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED_MODEL = HERE / "seed_model.keras"
TOLERANCE = 1e-5


def convert_with_cli(out: Path) -> dict:
    """Run the CLI as a user would; return its JSON report."""
    command = [sys.executable, "-m", "spatialdrop_onnx", "convert", str(SEED_MODEL),
               "-o", str(out), "--json"]
    print("$ spatialdrop-onnx convert", SEED_MODEL.relative_to(HERE.parent), "-o", out, "--json")
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"main job: conversion failed (exit code {result.returncode})")
    report = json.loads(result.stdout)
    print(f"  converted in {time.perf_counter() - start:.1f} s (opset {report['opset']}); "
          f"dropout sites:")
    for site in report["sites"]:
        how = ", ".join(site["converted_to"]) or site["training"]
        if site["training"] == "inference-only":
            how = f"INFERENCE ONLY: {site['note']}"
        print(f"    {site['path']:<16} {site['layer_class']:<17} -> {how}")
    return report


#: onnxruntime deletes ONNX Dropout nodes (a plain Keras Dropout becomes one) while
#: optimising the graph, even with training_mode true: Monte-Carlo sessions switch
#: that off (docs/keras.md). The seed model needs it only if the rewrite chooses
#: ONNX Dropout for the GRU masks; it costs nothing otherwise.
KEEP_DROPOUT = ["EliminateDropout"]


def quiet(options):  # noqa: ANN001, ANN201 - onnxruntime.SessionOptions in and out
    """Only errors from onnxruntime's logger (it warns about the training_mode default)."""
    options.log_severity_level = 3
    return options


def sessions(path: Path) -> dict:
    """onnxruntime sessions: the portable function body, and the native kernel if built."""
    import onnxruntime as ort

    import spatialdrop_onnx

    made = {"function body": ort.InferenceSession(str(path), quiet(ort.SessionOptions()),
                                                  providers=["CPUExecutionProvider"])}
    options = getattr(spatialdrop_onnx, "session_options", None)
    if options is None:
        print("  (native kernel: not available in this build; function body only)")
        return made
    try:
        made["native kernel"] = ort.InferenceSession(str(path), quiet(options()),
                                                     providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - report and carry on with the portable path
        print(f"  (native kernel: could not be loaded: {err}; function body only)")
    return made


def check_equality(keras_model, runs: dict, tokens: np.ndarray) -> bool:  # noqa: ANN001
    """Inference in onnxruntime vs Keras predict; prints one line per runtime path."""
    expected = keras_model.predict(tokens, verbose=0, batch_size=256)
    ok = True
    for name, session in runs.items():
        got = session.run(None, {"tokens": tokens, "training_mode": np.array(False)})[0]
        diff = float(np.max(np.abs(got - expected)))
        same_tokens = bool(np.array_equal(got.argmax(-1), expected.argmax(-1)))
        passed = diff <= TOLERANCE and same_tokens
        ok &= passed
        print(f"  {name:<14} max |onnx - keras.predict| = {diff:.2e}  "
              f"same predicted tokens: {same_tokens}  {'OK' if passed else 'FAIL'}")
    return ok


def monte_carlo(session, tokens: np.ndarray, targets: np.ndarray, samples: int) -> None:  # noqa: ANN001
    """Several training-mode passes; per-token mean and variance of the predicted class."""
    start = time.perf_counter()
    draws = np.stack([session.run(None, {"tokens": tokens, "training_mode": np.array(True)})[0]
                      for _ in range(samples)])            # [S, N, T, V]
    elapsed = time.perf_counter() - start
    deterministic = session.run(None, {"tokens": tokens, "training_mode": np.array(False)})[0]
    mean = draws.mean(axis=0)                              # predictive distribution
    predicted = mean.argmax(-1)                            # [N, T]
    chosen = np.take_along_axis(draws, predicted[None, ..., None], axis=-1)[..., 0]
    variance = chosen.var(axis=0)                          # per-token variance, [N, T]
    distinct = len({d.tobytes() for d in draws})
    print(f"  {samples} stochastic passes over {len(tokens)} sequences in {elapsed:.2f} s; "
          f"{distinct}/{samples} distinct outputs (masks change run to run)")
    print("  first sequences (token: MC prediction, mean prob +- std over samples):")
    for row in range(3):
        cells = [f"{p}:{mean[row, t, p]:.2f}+-{np.sqrt(variance[row, t]):.2f}"
                 for t, p in enumerate(predicted[row])]
        print(f"    input {tokens[row].tolist()}  target {targets[row].tolist()}")
        print(f"      {'  '.join(cells)}")
    correct = predicted == targets
    print(f"  token accuracy: deterministic {np.mean(deterministic.argmax(-1) == targets):.3f}, "
          f"MC mean {correct.mean():.3f}")
    if (~correct).any():
        print(f"  mean per-token variance: correct tokens {variance[correct].mean():.4f}, "
              f"wrong tokens {variance[~correct].mean():.4f} "
              f"({variance[~correct].mean() / variance[correct].mean():.1f}x: "
              "the model knows when it is unsure)")


def main(argv: list[str] | None = None) -> int:
    """Run the main job; 0 when the ONNX model reproduces Keras."""
    parser = argparse.ArgumentParser(description="Convert, verify and sample the seed model.")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="Keep the converted model here (default: a temporary folder).")
    parser.add_argument("--samples", type=int, default=30, help="Monte-Carlo passes.")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from build_seed_model import toy_reversal_data

    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out_dir or Path(scratch)
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "seed_model.onnx"
        print("1. convert the seed model with the CLI")
        convert_with_cli(onnx_path)

        import keras

        keras_model = keras.saving.load_model(SEED_MODEL, compile=False)
        tokens, targets = toy_reversal_data(512, seed=2024)
        print("2. inference: onnxruntime (training_mode=false) vs Keras predict")
        runs = sessions(onnx_path)
        ok = check_equality(keras_model, runs, tokens)
        print("3. Monte-Carlo dropout in onnxruntime (training_mode=true)")
        import onnxruntime as ort

        sampler = ort.InferenceSession(str(onnx_path), quiet(ort.SessionOptions()),
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=KEEP_DROPOUT)
        monte_carlo(sampler, tokens, targets, args.samples)
    if not ok:
        print("main job: FAILED — ONNX inference differs from Keras")
        return 1
    print("main job: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
