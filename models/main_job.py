"""The main job: convert the seed model with the CLI, check it, and run Monte-Carlo dropout.

1. ``spatialdrop-onnx convert models/seed_model.keras -o <dir>/seed_model.onnx --json``
2. inference (``training_mode`` false) in onnxruntime — through the portable
   function body and, when built, the native kernel — must equal Keras
   ``model.predict`` (max abs diff <= 1e-5) with identical predicted tokens;
3. Monte-Carlo dropout as one model: ``spatialdrop-onnx mc <dir>/seed_model.onnx
   -o <dir>/seed_model_mc.onnx --samples N --classification --json`` builds a
   model whose outputs are the mean and standard deviation of N stochastic
   passes (dropout on) and, the output being per-token class probabilities, the
   predictive entropy, the expected entropy and their difference, the mutual
   information (BALD), all computed inside the graph; one ``session.run`` gives
   the per-token uncertainty, the reason to keep dropout in an ONNX model. The
   deviation of the predicted class's probability and the mutual information
   must both be higher on wrongly predicted tokens than on right ones.

Exits non-zero if the conversion or the equality check fails, or if the
Monte-Carlo model cannot be built, gives a malformed output, does not sample
(every deviation 0) or does not separate wrong from right tokens.

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
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN announces itself otherwise

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


def build_mc_with_cli(onnx_path: Path, mc_path: Path, samples: int) -> dict:
    """``spatialdrop-onnx mc``, run as a user would; return its JSON report."""
    command = [sys.executable, "-m", "spatialdrop_onnx", "mc", str(onnx_path), "-o", str(mc_path),
               "--samples", str(samples), "--classification", "--json"]
    print(f"$ spatialdrop-onnx mc {onnx_path} -o {mc_path} --samples {samples} "
          "--classification --json")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"main job: building the Monte-Carlo model failed "
                         f"(exit code {result.returncode})")
    report = json.loads(result.stdout)
    print(f"  strategy {report['strategy']}: {report['reason']}")
    names = [o[k] for o in report["outputs"]
             for k in ("mean", "std", "entropy", "expected_entropy", "mutual_information")]
    print(f"  outputs: {', '.join(n for n in names if n)}")
    return report


def monte_carlo(mc_path: Path, tokens: np.ndarray, targets: np.ndarray, samples: int) -> bool:
    """One call of the Monte-Carlo model; per-token mean and deviation of the predicted class.

    True when the output is well formed, the samples differ, and the deviation is higher on
    wrong tokens than on right ones.
    """
    import spatialdrop_onnx

    session = spatialdrop_onnx.inference_session(mc_path)  # native kernel, bodies as fallback
    start = time.perf_counter()
    # mean, std: [N, T, V]; entropy, expected entropy, mutual information: [N, T]
    mean, std, entropy, expected_entropy, information = session.run(None, {"tokens": tokens})
    elapsed = time.perf_counter() - start
    expected = (len(tokens), tokens.shape[1], mean.shape[-1])
    if mean.shape != expected or std.shape != expected or not (
            np.isfinite(mean).all() and np.isfinite(std).all()):
        print(f"  malformed output: mean {mean.shape}, std {std.shape} (expected {expected})")
        return False
    predicted = mean.argmax(-1)                            # the MC prediction, [N, T]
    deviation = np.take_along_axis(std, predicted[..., None], axis=-1)[..., 0]
    print(f"  {samples} stochastic passes over {len(tokens)} sequences in one call: "
          f"{elapsed:.2f} s; {np.mean(std > 0):.0%} of the outputs vary across samples")
    print("  first sequences (token: MC prediction, mean prob +- std over samples):")
    for row in range(3):
        cells = [f"{p}:{mean[row, t, p]:.2f}+-{deviation[row, t]:.2f}"
                 for t, p in enumerate(predicted[row])]
        print(f"    input {tokens[row].tolist()}  target {targets[row].tolist()}")
        print(f"      {'  '.join(cells)}")
    correct = predicted == targets
    print(f"  token accuracy of the MC mean: {correct.mean():.3f}")
    if not (std > 0).any():
        print("  every deviation is 0: the model did not sample")
        return False
    if correct.all() or not correct.any():
        print("  no wrong (or no right) token to compare")
        return False
    right, wrong = float(deviation[correct].mean()), float(deviation[~correct].mean())
    print(f"  mean per-token std: correct tokens {right:.4f}, wrong tokens {wrong:.4f} "
          f"({wrong / right:.1f}x: the model knows when it is unsure)")
    if any(v.shape != mean.shape[:2] or not np.isfinite(v).all()
           for v in (entropy, expected_entropy, information)):
        print(f"  malformed entropies: {entropy.shape}, {expected_entropy.shape}, "
              f"{information.shape}")
        return False
    for label, values in [("predictive entropy", entropy), ("expected entropy", expected_entropy),
                          ("mutual information", information)]:
        on_right, on_wrong = float(values[correct].mean()), float(values[~correct].mean())
        print(f"  mean per-token {label} (nats): correct tokens {on_right:.4f}, "
              f"wrong tokens {on_wrong:.4f} ({on_wrong / on_right:.1f}x)")
    mi_right, mi_wrong = (float(information[correct].mean()),
                          float(information[~correct].mean()))
    return wrong > right and mi_wrong > mi_right


def main(argv: list[str] | None = None) -> int:
    """Run the main job; 0 when the ONNX model reproduces Keras."""
    parser = argparse.ArgumentParser(description="Convert, verify and sample the seed model.")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="Keep the converted model here (default: a temporary folder).")
    parser.add_argument("--samples", type=int, default=30, help="Monte-Carlo passes (>= 2).")
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
        print("3. Monte-Carlo dropout as one model (mean and std of the samples in-graph)")
        mc_path = out_dir / "seed_model_mc.onnx"
        build_mc_with_cli(onnx_path, mc_path, args.samples)
        uncertain = monte_carlo(mc_path, tokens, targets, args.samples)
    if not ok:
        print("main job: FAILED — ONNX inference differs from Keras")
        return 1
    if not uncertain:
        print("main job: FAILED — the Monte-Carlo model does not show the uncertainty")
        return 1
    print("main job: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
