#!/usr/bin/env python
"""Benchmark ``convert`` against tf2onnx's ``from_function`` alone, stage by stage.

For each model, in one process with TensorFlow already imported, rounds of

* **convert**: ``convert_keras(model.keras, out.onnx)``, the CLI's pipeline (load,
  probe, trace, tf2onnx, rewrite, strip, check, verify, save), with its per-stage
  seconds (``report.seconds``; ``other`` is the rest: input checks, the layer
  survey, the report);
* **from_function**: what tf2onnx alone costs for the same graph: load the same
  ``.keras``, trace the same function (the converter's tracer, the same layers
  forced to training mode) and ``tf2onnx.convert.from_function`` on it (the same
  opset and Erfc handler) — apples to apples;
* **inference from_function**: the same with no layer forced to training mode
  (``model(x, training=False)``): what exporting the inference model alone costs,
  a smaller graph (no dropout subgraphs, no RNN masks),

rotate their order from round to round, after one warm-up of each. Ratios are the
median of the per-round ratios (the machine is shared); stage figures are medians.
``--processes N`` also times N whole processes of each side, rotated: ``python -m
spatialdrop_onnx convert MODEL -o OUT -q`` against a script importing
TensorFlow/Keras/tf2onnx and doing the same load, trace and ``from_function``.

Models: ``seed`` (``models/seed_model.keras``: SpatialDropout1D and a GRU with
dropout masks), ``efficientnet`` (``keras.applications.EfficientNetB0`` at 64×64
from ``models/architectures.py``: 9 stochastic-depth sites and the top dropout),
``convnext`` (a tiny ``keras.applications`` ConvNeXt: its StochasticDepth layers
are found by the probe trace).

    PYTHONPATH=. python scripts/bench_convert.py [--models seed efficientnet]
                                                 [--rounds 5] [--processes 0] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from real_models import load_architectures  # noqa: E402 - a sibling script

ROOT = Path(__file__).resolve().parents[1]
SEED_MODEL = ROOT / "models" / "seed_model.keras"
MODELS = ("seed", "efficientnet", "convnext")
#: Stages of ``report.seconds``, in pipeline order.
STAGES = ("import", "load", "probe", "trace", "tf2onnx", "rewrite", "strip", "check",
          "verify", "save")
BASELINE_STAGES = ("load", "trace", "from_function")


def model_file(name: str, folder: Path) -> Path:
    """The ``.keras`` file of a benchmark model (built and saved for the applications)."""
    if name == "seed":
        return SEED_MODEL
    architectures = load_architectures()
    build = {"efficientnet": architectures.efficientnet_b0,
             "convnext": architectures.convnext_mini}[name]
    path = folder / f"{name}.keras"
    build().save(path)
    return path


# --- the two sides ----------------------------------------------------------------------


def run_convert(path: Path, out: Path) -> dict[str, float]:
    """``convert_keras`` once: its stages and its wall time (``total``)."""
    from spatialdrop_onnx.converters.keras_convert import convert_keras

    start = time.perf_counter()
    report = convert_keras(path, out)
    total = time.perf_counter() - start
    seconds = {stage: report.seconds.get(stage, 0.0) for stage in STAGES if stage != "import"}
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    seconds["total"] = total
    return seconds


def forced_paths(path: Path, out: Path) -> list[str]:
    """Paths of the layers ``convert`` traces in training mode (from its report)."""
    from spatialdrop_onnx.converters.keras_convert import convert_keras

    report = convert_keras(path, out)
    return [layer.path for layer in report.layers if layer.training == "kept"]


def run_from_function(path: Path, forced: list[str]) -> dict[str, float]:
    """Load, trace the same function, ``tf2onnx.convert.from_function``: stages and total."""
    from spatialdrop_onnx.converters.keras_export import CUSTOM_OP_HANDLERS
    from spatialdrop_onnx.converters.keras_layers import iter_sublayers
    from spatialdrop_onnx.converters.keras_stack import DEFAULT_OPSET, import_keras_stack
    from spatialdrop_onnx.converters.keras_trace import trace_keras

    stack = import_keras_stack()
    seconds: dict[str, float] = {}
    start = clock = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = stack.keras.saving.load_model(path, compile=False, safe_mode=True)
        seconds["load"] = time.perf_counter() - clock
        clock = time.perf_counter()
        layers = dict(iter_sublayers(model))
        traced = trace_keras(model, stack, [layers[p] for p in forced])
        seconds["trace"] = time.perf_counter() - clock
        clock = time.perf_counter()
        stack.tf2onnx.convert.from_function(
            traced.function, input_signature=traced.specs, opset=DEFAULT_OPSET,
            custom_op_handlers=CUSTOM_OP_HANDLERS)
        seconds["from_function"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - start
    return seconds


def _fresh() -> None:
    """The same starting point for each run: Keras' global state cleared, garbage collected."""
    import keras

    keras.backend.clear_session()
    gc.collect()


# --- measuring --------------------------------------------------------------------------


def bench_model(name: str, path: Path, rounds: int, scratch: Path) -> dict[str, Any]:
    """Interleaved rounds of convert and from_function on one model; medians and ratios."""
    out = scratch / f"{name}.onnx"
    _fresh()
    forced = forced_paths(path, out)  # also the warm-up of convert
    _fresh()
    run_from_function(path, forced)  # warm-up of the baseline
    _fresh()
    run_from_function(path, [])
    sides = {"convert": lambda: run_convert(path, out),
             "from_function": lambda: run_from_function(path, forced),
             "inference": lambda: run_from_function(path, [])}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    names = list(sides)
    for index in range(rounds):
        for side in names[index % 3:] + names[:index % 3]:
            _fresh()
            runs[side].append(sides[side]())
    converts, baselines, plain = runs["convert"], runs["from_function"], runs["inference"]

    def ratio(mine: list[dict[str, float]], key: str, theirs: list[dict[str, float]],
              their_key: str) -> float:
        return round(statistics.median(a[key] / b[their_key]
                                       for a, b in zip(mine, theirs, strict=True)), 2)
    ratios = [c["total"] / b["total"] for c, b in zip(converts, baselines, strict=True)]

    def medians(runs: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}

    import onnx

    return {"model": name, "file": str(path), "nodes": len(onnx.load(out).graph.node),
            "forced_layers": len(forced), "rounds": rounds,
            "convert": medians(converts), "from_function": medians(baselines),
            "inference_from_function": medians(plain),
            "ratio": round(statistics.median(ratios), 2),
            "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "tf2onnx_stage_vs_from_function": ratio(converts, "tf2onnx", baselines,
                                                    "from_function"),
            "ratio_vs_inference": ratio(converts, "total", plain, "total")}


def bench_processes(path: Path, count: int, scratch: Path) -> dict[str, Any]:
    """``count`` whole processes of each side, rotated: median wall times and per-round ratios."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = scratch / "process.onnx"
    script = [sys.executable, str(Path(__file__).resolve()), "--baseline-process", str(path)]
    commands = {"convert": [sys.executable, "-m", "spatialdrop_onnx", "convert", str(path),
                            "-o", str(out), "-q"],
                "from_function": script,
                "inference": [*script, "--inference"]}
    times: dict[str, list[float]] = {side: [] for side in commands}
    names = list(commands)
    for index in range(count):
        for side in names[index % 3:] + names[:index % 3]:
            start = time.perf_counter()
            subprocess.run(commands[side], env=env, check=True, stdout=subprocess.DEVNULL)
            times[side].append(time.perf_counter() - start)

    def ratios(theirs: str) -> list[float]:
        return [c / b for c, b in zip(times["convert"], times[theirs], strict=True)]

    return {"processes": count,
            **{side: round(statistics.median(values), 2) for side, values in times.items()},
            "ratio": round(statistics.median(ratios("from_function")), 2),
            "ratio_range": [round(min(ratios("from_function")), 2),
                            round(max(ratios("from_function")), 2)],
            "ratio_vs_inference": round(statistics.median(ratios("inference")), 2)}


def baseline_process(path: Path, inference: bool) -> None:
    """One whole tf2onnx-only process (``--baseline-process``): import, load, trace, convert."""
    from spatialdrop_onnx.converters.keras_layers import find_dropout_sites
    from spatialdrop_onnx.converters.keras_stack import import_keras_stack

    stack = import_keras_stack()
    forced: list[str] = []
    if not inference:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = stack.keras.saving.load_model(path, compile=False, safe_mode=True)
        forced = [site.path for site in find_dropout_sites(model, stack.keras)
                  if site.kept_in_training]
        del model
    run_from_function(path, forced)


# --- output -----------------------------------------------------------------------------


def print_result(result: dict[str, Any]) -> None:
    convert, base = result["convert"], result["from_function"]
    plain = result["inference_from_function"]
    print(f"\n{result['model']}: {result['file']} ({result['nodes']} ONNX nodes, "
          f"{result['forced_layers']} layers kept random), median of {result['rounds']} "
          "interleaved rounds, seconds")
    print(f"  {'stage':<10}{'convert':>9}{'from_function':>15}{'inference only':>16}")
    for stage in (*STAGES[1:], "other"):
        if stage not in convert:
            continue
        theirs = {"load": "load", "trace": "trace", "tf2onnx": "from_function"}.get(stage)
        others = (f"{base[theirs]:>15.3f}{plain[theirs]:>16.3f}" if theirs
                  else f"{'':>15}{'':>16}")
        print(f"  {stage:<10}{convert[stage]:>9.3f}{others}")
    print(f"  {'total':<10}{convert['total']:>9.3f}{base['total']:>15.3f}{plain['total']:>16.3f}")
    low, high = result["ratio_range"]
    print(f"  convert / (load + trace + from_function), same traced function: "
          f"{result['ratio']:.2f}x (per-round {low:.2f}-{high:.2f}x)")
    print(f"  tf2onnx stage / from_function: {result['tf2onnx_stage_vs_from_function']:.2f}x; "
          f"convert / inference-only export: {result['ratio_vs_inference']:.2f}x")
    if "whole_process" in result:
        whole = result["whole_process"]
        low, high = whole["ratio_range"]
        print(f"  whole process (imports included), median of {whole['processes']}: convert "
              f"{whole['convert']:.2f} s, from_function {whole['from_function']:.2f} s: "
              f"{whole['ratio']:.2f}x (per-round {low:.2f}-{high:.2f}x); inference only "
              f"{whole['inference']:.2f} s: {whole['ratio_vs_inference']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["seed", "efficientnet"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=0,
                        help="also time this many whole processes of each, interleaved")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline-process", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_process:
        baseline_process(args.baseline_process, args.inference)
        return 0

    start = time.perf_counter()
    from spatialdrop_onnx.converters.keras_stack import import_keras_stack

    import_keras_stack()
    import spatialdrop_onnx.passes  # noqa: F401
    imported = time.perf_counter() - start
    results = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for name in args.models:
            path = model_file(name, scratch)
            result = bench_model(name, path, args.rounds, scratch)
            if args.processes:
                result["whole_process"] = bench_processes(path, args.processes, scratch)
            results.append(result)
            if not args.json:
                print_result(result)
    if args.json:
        print(json.dumps({"import_seconds": round(imported, 2), "models": results}, indent=2))
    else:
        print(f"\n(importing TensorFlow, Keras, tf2onnx and the passes took {imported:.2f} s "
              "once, before the rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
