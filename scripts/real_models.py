#!/usr/bin/env python
"""Evidence: each Keras architecture class through ``convert``, written to docs/real-models.md.

For every class of ``models/architectures.py`` (the builders the tests use):
build it (random weights, non-trivial BatchNormalization statistics), save it
as ``.keras``, convert it with ``convert_keras`` (the CLI's pipeline) and
measure

* **framework sites**: random draws in TensorFlow's own trace of
  ``model(x, training=True)`` (counted without the converter);
* **converted**: SpatialDropout and ONNX Dropout nodes in the written model;
* **eval max diff**: onnxruntime (native kernel session, ``training_mode``
  false) against ``model.predict`` on a batch of 4, absolute and relative to
  the largest output;
* **time**: wall-clock seconds of ``convert_keras``, and its tf2onnx share;
* the exit status the CLI ends with, and the layers it names.

A second table converts TCNs of growing depth, to show the time per site.

    PYTHONPATH=. python scripts/real_models.py [--out docs/real-models.md] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL_BATCH = 4
#: Residual blocks of the TCNs for the depth table (dilations 1..64, repeated).
TCN_DEPTHS = (4, 8, 16)
REWRITE_REPEATS = 3


def load_architectures() -> ModuleType:
    """``models/architectures.py`` (the model scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("architectures",
                                                  ROOT / "models" / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["architectures"] = module
    spec.loader.exec_module(module)
    return module


def dropout_nodes(model: onnx.ModelProto) -> int:
    import spatialdrop_onnx as sd
    from spatialdrop_onnx.graph import iter_nodes

    return sum((n.domain, n.op_type) in ((sd.DOMAIN, sd.OP_TYPE), ("", "Dropout"))
               for _, n in iter_nodes(model))


def eval_diff(model: Any, path: Path, sample: np.ndarray) -> tuple[float, float]:
    """(max |ONNX - Keras|, that divided by max |Keras|) with training_mode false."""
    import onnxruntime as ort

    import spatialdrop_onnx as sd

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the "training_mode appears in graph inputs" notice
    session = sd.inference_session(str(path), so=options)
    name = session.get_inputs()[0].name
    got = session.run(None, {name: sample, "training_mode": np.array(False)})[0]
    want = np.asarray(model.predict(sample, verbose=0))
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    return diff, diff / max(float(np.max(np.abs(want))), 1e-30)


def measure(name: str, model: Any, sample: np.ndarray, folder: Path,
            architectures: ModuleType) -> dict[str, Any]:
    """Convert one built model and measure it (see the module docstring)."""
    from spatialdrop_onnx.converters.keras_convert import convert_keras

    source, out = folder / f"{name}.keras", folder / f"{name}.onnx"
    model.save(source)
    start = time.perf_counter()
    report = convert_keras(source, out)
    seconds = time.perf_counter() - start
    diff, relative = eval_diff(model, out, sample)
    partial = report.partial_error()
    named = [f"`{layer.path}` ({layer.layer_class})" for layer in report.partial_layers]
    skipped = [f"`{layer.path}` ({layer.layer_class})" for layer in report.layers
               if layer.training.value == "skipped"]
    return {
        "name": name, "framework": architectures.framework_draws(model, sample),
        "converted": dropout_nodes(onnx.load(out)), "diff": diff, "relative": relative,
        "seconds": seconds, "tf2onnx": report.seconds.get("tf2onnx", 0.0),
        "rewrite": report.seconds.get("rewrite", 0.0),
        "exit": 5 if partial is not None else 0, "named": named, "skipped": skipped,
    }


def rewrite_timing(model: Any) -> dict[str, float]:
    """The rewrite pass alone on the model's raw training export: nodes, best-of seconds."""
    from spatialdrop_onnx.converters.keras_export import export_keras_training_graph
    from spatialdrop_onnx.passes import rewrite

    raw = export_keras_training_graph(model)
    best = float("inf")
    for _ in range(REWRITE_REPEATS):
        start = time.perf_counter()
        rewrite(raw)
        best = min(best, time.perf_counter() - start)
    return {"nodes": len(raw.graph.node), "rewrite_best": best}


def notes(row: dict[str, Any]) -> str:
    parts = []
    if row["named"]:
        parts.append("inference only, named: " + ", ".join(row["named"]))
    if row["skipped"]:
        parts.append("augmentation noted: " + ", ".join(row["skipped"]))
    return "; ".join(parts) or "all sites kept"


def versions() -> str:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return (f"TensorFlow {tf.__version__}, Keras {keras.__version__}, tf2onnx "
            f"{tf2onnx.__version__}, onnx {onnx.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPU(s)")


def render(rows: list[dict[str, Any]], scaling: list[dict[str, Any]],
           architectures: ModuleType) -> str:
    lines = [
        "# Real Keras architectures through `convert`",
        "",
        "<!-- Generated by scripts/real_models.py: do not edit by hand; run it again. -->",
        "",
        "Each class is built by `models/architectures.py` (the builders the tests in "
        "`tests/test_keras_real_models.py` use) with random weights, small inputs and "
        "BatchNormalization statistics far from the defaults, saved as `.keras` and converted "
        "by `convert_keras` (the pipeline of `spatialdrop-onnx convert`).",
        "",
        "- **framework sites**: random draws in TensorFlow's own trace of "
        "`model(x, training=True)` (an RNN draws one mask per gate for the input and for the "
        "state; augmentation layers count too);",
        "- **converted**: SpatialDropout and ONNX Dropout nodes in the written model;",
        f"- **eval max diff**: onnxruntime with `training_mode` false against `model.predict` "
        f"on a batch of {EVAL_BATCH} (absolute; relative to the largest output);",
        "- **time**: wall-clock seconds of `convert_keras` (loading, tracing, tf2onnx, "
        "rewrite, checks, save), with the tf2onnx share;",
        "- **exit**: the status `spatialdrop-onnx convert` ends with (5: written, but some "
        "randomness is exported for inference only, each such layer named).",
        "",
        "| class | framework sites | converted | eval max diff (relative) | time s "
        "(tf2onnx) | exit | notes |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        description = architectures.ARCHITECTURES[row["name"]].description
        lines.append(
            f"| `{row['name']}`: {description} | {row['framework']} | {row['converted']} | "
            f"{row['diff']:.2e} ({row['relative']:.1e}) | {row['seconds']:.1f} "
            f"({row['tf2onnx']:.1f}) | {row['exit']} | {notes(row)} |")
    lines += [
        "",
        "## Time against depth (TCN)",
        "",
        "The rewrite applies its rules once and reads each site's noise shape from the site "
        "itself; this table shows how its time grows with the number of sites.",
        "",
        f"TCNs of 4, 8 and 16 residual blocks (dilations 1…64, repeated). *rewrite*: the "
        f"rewrite pass alone on the raw tf2onnx export (best of {REWRITE_REPEATS}); "
        "*convert*: the whole conversion.",
        "",
        "| residual blocks | sites | converted | raw nodes | rewrite s | rewrite ms/site "
        "| convert s (tf2onnx) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in scaling:
        per_site = 1000 * row["rewrite_best"] / max(row["framework"], 1)
        lines.append(f"| {row['blocks']} | {row['framework']} | {row['converted']} | "
                     f"{row['nodes']} | {row['rewrite_best']:.2f} | {per_site:.0f} | "
                     f"{row['seconds']:.1f} ({row['tf2onnx']:.1f}) |")
    lines += ["", f"Measured with {versions()}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real-models.md")
    parser.add_argument("--only", nargs="*", help="architecture names (default: all)")
    args = parser.parse_args(argv)
    architectures = load_architectures()
    names = args.only or list(architectures.ARCHITECTURES)
    rows, scaling = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            architecture = architectures.ARCHITECTURES[name]
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, architecture.build(), architecture.sample(EVAL_BATCH, 7),
                                Path(folder), architectures))
        for depth in TCN_DEPTHS:
            print(f"tcn with {depth} blocks ...", file=sys.stderr, flush=True)
            dilations = architectures.TCN_DILATIONS
            model = architectures.tcn(tuple(dilations[i % len(dilations)]
                                            for i in range(depth)))
            sample = architectures.ARCHITECTURES["tcn"].sample(EVAL_BATCH, 7)
            row = measure(f"tcn{depth}", model, sample, Path(folder), architectures)
            scaling.append({**row, **rewrite_timing(model), "blocks": depth})
    args.out.write_text(render(rows, scaling, architectures))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
