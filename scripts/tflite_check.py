#!/usr/bin/env python
"""TFLite through onnx2tf: convert our models with onnx2tf and run them in the TFLite interpreter.

onnx2tf pins an older TensorFlow than the ``keras`` extra, so it is not in the test suite;
this script is the evidence instead. It

1. makes (or reuses) its own virtualenv, ``.venv-tflite`` by default, from
   ``scripts/tflite-requirements.txt`` (exact pins: onnx2tf, the TensorFlow it pins,
   ai-edge-litert); nothing goes into the main ``.venv``;
2. builds the inputs with the main venv (``.venv/bin/python``), through the CLI as a user would:

   * ``cnn_inlined``: a small CNN, Conv -> SpatialDropout(0.3) -> Conv, put through
     ``spatialdrop-onnx inline`` (the dropout as standard ops, ``training_mode`` an input);
   * ``cnn_stripped``: the same CNN through ``spatialdrop-onnx strip`` (no dropout left: a
     control that onnx2tf and the interpreter work on this machine);
   * ``seed_stripped``: ``models/seed_model.keras`` through ``spatialdrop-onnx convert
     --strip`` (the deployment form: both GRUs as the fused ONNX ``GRU`` op);
   * ``seed_strip_loop``: ``convert`` then ``strip`` (the encoder keeps tf2onnx's ``Loop``:
     its recurrent dropout needs it in the training model);
   * ``seed_unrolled``: ``convert``, ``strip``, then ``inline --unroll-loops`` (that Loop
     written out step by step);

   and onnxruntime's outputs on the same inputs (``training_mode`` false);
3. converts each with onnx2tf (in the tflite venv, one process per model) and runs the
   float32 ``.tflite`` in the interpreter: inference is compared with onnxruntime (max abs
   diff); for ``cnn_inlined`` also training mode over ``--runs`` runs on the dropout's
   output: whole channels zero and the kept ones scaled by 1/(1-ratio), the drop rate within
   4 binomial standard deviations of 0.3, and masks that change from run to run;
4. prints a table of what worked and what did not (a failure with its error's first line),
   or with ``--json`` the same as JSON.

Exit status: 0 when it ran to the end, whatever failed in a conversion (that is reported);
1 when it could not run (no main venv, the tflite venv could not be made, a stage died
without a report); 2 for bad arguments.

    python scripts/tflite_check.py [--json] [--workdir DIR] [--runs 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_VENV = ROOT / ".venv-tflite"
REQUIREMENTS = Path(__file__).resolve().with_name("tflite-requirements.txt")
SEED_MODEL = ROOT / "models" / "seed_model.keras"

EXIT_OK, EXIT_CANNOT_RUN, EXIT_USAGE = 0, 1, 2
#: The CNN: batch, input channels, channels after the first conv, height = width. Input
#: channels are not 3: onnx2tf fetches a sample-image file from the network for
#: NHWC inputs with 3 channels (see ``_offline_calibration``); 8 channels on a 6x6 map keep
#: NCHW and NHWC shapes apart, so the layout of a TFLite tensor is never ambiguous.
BATCH, IN_CHANNELS, CHANNELS, SIZE = 2, 4, 8, 6
RATIO = 0.3
TRAINING_MODE = "training_mode"
#: The dropout's output, a second graph output of the CNN so training mode can be checked
#: channel by channel (after the next Conv every channel mixes).
DROPPED = "dropped"
#: The seed model's vocabulary (token ids in [0, 10)).
VOCABULARY = 10
#: TFLite (XNNPACK) against onnxruntime, float32: relative to the output's largest value.
INFERENCE_TOLERANCE = 1e-4
SIGMAS = 4.0
CASES = {
    "cnn_inlined": "Conv -> SpatialDropout 0.3 -> Conv, spatialdrop-onnx inline",
    "cnn_stripped": "the same CNN, spatialdrop-onnx strip (control: no dropout)",
    "seed_stripped": "models/seed_model.keras, convert --strip (fused GRU ops)",
    "seed_strip_loop": "models/seed_model.keras, convert then strip (the encoder's Loop)",
    "seed_unrolled": "models/seed_model.keras, convert, strip, inline --unroll-loops",
}
QUIET_TF = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}


class CannotRun(Exception):
    """The script could not do its job (as opposed to a conversion that failed)."""


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``; for Keras' wrapper ("Exception encountered when
    calling layer ...") the wrapped error's own line is appended, it says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    inner = [line for line in lines[1:] if re.match(r"^\w+(Error|Exception): ", line)]
    if inner:
        text += f" -> {inner[-1]}"
    return text


def last_line(text: str) -> str:
    """The last non-empty line of a command's output (where our CLI puts its one-line error)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def installed(*packages: str) -> dict[str, str]:
    """The versions of those ``packages`` that are installed here."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


# --------------------------------------------------------------------------- build stage
# Runs in the main venv: onnx, onnxruntime, numpy and spatialdrop_onnx.

def _cli(python: str, workdir: Path, *args: str) -> None:
    """Run ``spatialdrop-onnx ARGS`` as a user would; a failure raises with its error line."""
    done = subprocess.run([python, "-m", "spatialdrop_onnx", *args, "-q"], cwd=workdir,
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, **QUIET_TF))
    if done.returncode != 0:
        raise RuntimeError(f"spatialdrop-onnx {args[0]}: exit {done.returncode}: "
                           f"{last_line(done.stderr) or last_line(done.stdout)}")


def _cnn(path: Path) -> None:
    """Conv -> SpatialDropout(RATIO, channels-first default axes) -> Conv, with the dropout's
    output as a second graph output; fixed random weights, static shapes."""
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh

    import spatialdrop_onnx as sd

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (CHANNELS, IN_CHANNELS, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (5, CHANNELS, 3, 3)).astype(np.float32)
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node(sd.OP_TYPE, ["c1", "ratio", TRAINING_MODE], [DROPPED], domain=sd.DOMAIN,
                     name="spatial_dropout"),
        oh.make_node("Conv", [DROPPED, "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    graph = oh.make_graph(
        nodes, "cnn_spatial_dropout",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, IN_CHANNELS, SIZE, SIZE]),
         oh.make_tensor_value_info(TRAINING_MODE, TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 5, SIZE, SIZE]),
         oh.make_tensor_value_info(DROPPED, TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2"),
         oh.make_tensor("ratio", TensorProto.FLOAT, [], [RATIO]),
         oh.make_tensor(TRAINING_MODE, TensorProto.BOOL, [], [False])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17),
                                                oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])
    model.ir_version = 10  # what every supported onnxruntime (and onnx2tf's 1.23) loads
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _feeds(path: Path) -> dict[str, Any]:
    """One input per graph input: ``training_mode`` false, token ids for integer inputs,
    uniform [0, 1) floats otherwise; a symbolic dimension becomes BATCH."""
    import numpy as np
    import onnx

    rng = np.random.default_rng(1)
    feeds = {}
    for info in onnx.load(path, load_external_data=False).graph.input:
        tensor = info.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else BATCH for d in tensor.shape.dim]
        if info.name == TRAINING_MODE:
            feeds[info.name] = np.array(False)
        elif np.issubdtype(dtype, np.integer):
            feeds[info.name] = rng.integers(0, VOCABULARY, size=dims).astype(dtype)
        else:
            feeds[info.name] = rng.random(dims).astype(dtype)
    return feeds


def _build_case(name: str, workdir: Path, python: str) -> dict[str, Any]:
    """Make ``name``'s ONNX file, feeds and onnxruntime reference; return its spec."""
    import numpy as np
    import onnxruntime as ort

    started = time.perf_counter()
    if name.startswith("cnn_"):
        source = workdir / "cnn.onnx"
        if not source.exists():
            _cnn(source)
        target = workdir / f"{name}.onnx"
        _cli(python, workdir, "inline" if name == "cnn_inlined" else "strip", str(source),
             "-o", str(target))
        how = f"spatialdrop-onnx {'inline' if name == 'cnn_inlined' else 'strip'}"
    elif name == "seed_stripped":
        target = workdir / f"{name}.onnx"
        _cli(python, workdir, "convert", str(SEED_MODEL), "--strip", "-o", str(target))
        how = "spatialdrop-onnx convert --strip"
    else:
        converted = workdir / "seed.onnx"
        _cli(python, workdir, "convert", str(SEED_MODEL), "-o", str(converted))
        target = workdir / f"{name}.onnx"
        _cli(python, workdir, "strip", str(converted), "-o", str(target))
        how = "spatialdrop-onnx convert, strip"
        if name == "seed_unrolled":
            stripped = workdir / "seed_strip_for_unrolling.onnx"
            target.replace(stripped)
            _cli(python, workdir, "inline", str(stripped), "--unroll-loops", "-o", str(target))
            how += ", inline --unroll-loops"
    feeds = _feeds(target)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    reference = dict(zip(names, session.run(None, feeds), strict=True))
    np.savez(workdir / f"{name}.feeds.npz", **feeds)
    np.savez(workdir / f"{name}.reference.npz", **reference)
    spec: dict[str, Any] = {"onnx": target.name, "built_by": how,
                            "seconds": round(time.perf_counter() - started, 1)}
    if name == "cnn_inlined":
        if TRAINING_MODE not in feeds:
            raise RuntimeError(f"the inlined CNN has no {TRAINING_MODE} input")
        spec["training"] = {"output": DROPPED, "ratio": RATIO, "channel_axis": 1}
    return spec


def build_stage(workdir: Path, cases: list[str]) -> int:
    """Write ``build.json``: per case its spec, or the error that stopped its build."""
    specs: dict[str, Any] = {}
    versions = installed("spatialdrop-onnx", "onnx", "onnxruntime", "tensorflow",
                         "tensorflow-cpu", "tf2onnx")
    for name in cases:
        try:
            specs[name] = _build_case(name, workdir, sys.executable)
        except Exception as error:  # noqa: BLE001 - reported per case, never fatal
            specs[name] = {"error": first_line(error)}
    (workdir / "build.json").write_text(json.dumps({"versions": versions, "cases": specs},
                                                   indent=1))
    return EXIT_OK


# --------------------------------------------------------------------------- case stage
# Runs in the tflite venv: onnx2tf, TensorFlow 2.19, ai-edge-litert.

def _offline_calibration(folder: Path) -> None:
    """onnx2tf loads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from the
    working directory, or downloads it, when every input is an NHWC image with 3 channels;
    offline that download fails the conversion. A zero file stands in (it only feeds
    onnx2tf's own accuracy check, not the converted model)."""
    import numpy as np

    np.save(folder / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.zeros((20, 128, 128, 3), np.float32))


def _channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation onnx2tf applies to a channels-first tensor: (0, 2, ..., r-1, 1)."""
    return (0, *range(2, len(shape)), 1)


def _to_tflite(array: Any, shape: tuple[int, ...], dtype: Any) -> tuple[Any, str]:
    """``array`` as a TFLite input of ``shape`` and ``dtype`` wants it, and which layout that
    was (onnx2tf moves channels last; a scalar may become shape [1])."""
    import numpy as np

    array = np.asarray(array).astype(dtype, copy=False)
    if tuple(array.shape) == shape:
        return array, "as is"
    if array.ndim == 0 and shape == (1,):
        return array.reshape(1), "scalar as [1]"
    if array.ndim >= 3:
        moved = np.transpose(array, _channels_last(array.shape))
        if moved.shape == shape:
            return np.ascontiguousarray(moved), "channels last"
    raise ValueError(f"input shape {list(array.shape)} fits neither the TFLite input "
                     f"{list(shape)} nor its channels-last form")


def _from_tflite(array: Any, shape: tuple[int, ...]) -> Any:
    """A TFLite output back in the ONNX output's layout (``shape``)."""
    import numpy as np

    if tuple(array.shape) == shape:
        return array
    if len(shape) >= 3:
        perm = _channels_last(shape)
        if tuple(shape[p] for p in perm) == tuple(array.shape):
            return np.transpose(array, np.argsort(perm))
    raise ValueError(f"TFLite output shape {list(array.shape)} fits neither the ONNX shape "
                     f"{list(shape)} nor its channels-last form")


def _interpreter(path: Path) -> tuple[Any, str]:
    """An interpreter for ``path``: ai-edge-litert's (TensorFlow's own is deprecated)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        kind = "ai_edge_litert"
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter  # noqa: N806
        kind = "tf.lite"
    return Interpreter(model_path=str(path)), kind


class _Runner:
    """The converted model's signature, fed and read in the ONNX layout."""

    def __init__(self, path: Path, feeds: dict[str, Any]) -> None:
        interpreter, self.kind = _interpreter(path)
        self.run_signature = interpreter.get_signature_runner()
        details = self.run_signature.get_input_details()
        self.inputs = {name: (tuple(int(d) for d in detail["shape"]), detail["dtype"])
                       for name, detail in details.items()}
        missing = sorted(set(feeds) - set(self.inputs))
        if missing:
            raise KeyError(f"ONNX input(s) {missing} not in the TFLite signature "
                           f"(it has {sorted(self.inputs)})")
        self.layouts = {name: _to_tflite(array, *self.inputs[name])[1]
                        for name, array in feeds.items()}
        try:  # a private API, for the report only
            self.ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
        except Exception:  # noqa: BLE001
            self.ops = []

    def __call__(self, feeds: dict[str, Any], shapes: dict[str, tuple[int, ...]]
                 ) -> dict[str, Any]:
        import numpy as np

        given = {name: _to_tflite(array, *self.inputs[name])[0]
                 for name, array in feeds.items()}
        outputs = self.run_signature(**given)
        missing = sorted(set(shapes) - set(outputs))
        if missing:
            raise KeyError(f"ONNX output(s) {missing} not in the TFLite signature "
                           f"(it has {sorted(outputs)})")
        return {name: _from_tflite(np.asarray(outputs[name]), shape)
                for name, shape in shapes.items()}


def _inference(run: _Runner, feeds: dict[str, Any], reference: dict[str, Any]
               ) -> dict[str, Any]:
    import numpy as np

    shapes = {name: tuple(value.shape) for name, value in reference.items()}
    got = run(feeds, shapes)
    diffs, over = {}, []
    for name, want in reference.items():
        diffs[name] = float(np.max(np.abs(got[name].astype(np.float64) - want))) \
            if want.size else 0.0
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        if diffs[name] > INFERENCE_TOLERANCE * scale:
            over.append(name)
    ok = not over
    detail = ", ".join(f"{name} {diff:.1e}" for name, diff in diffs.items())
    return {"status": "ok" if ok else "FAIL",
            "detail": f"max abs diff vs onnxruntime: {detail}"
                      + ("" if ok else f" (over {INFERENCE_TOLERANCE:g} x max|out|: {over})"),
            "max_abs_diff": diffs}


def _training(run: _Runner, feeds: dict[str, Any], reference: dict[str, Any],
              spec: dict[str, Any], runs: int) -> dict[str, Any]:
    """``runs`` runs in training mode, checked against the inference output of the dropout
    (``reference[output]``: its input, as training_mode false is the identity)."""
    import numpy as np

    output, ratio, axis = spec["output"], spec["ratio"], spec["channel_axis"]
    base = reference[output].astype(np.float64)
    # One decision per (batch, channel): reduce over every other axis.
    spatial = tuple(a for a in range(base.ndim) if a not in (0, axis))
    scaled = base / (1 - ratio)
    feeds = dict(feeds, **{TRAINING_MODE: np.array(True)})
    dropped, mixed, masks, zeros = 0, 0, set(), 0.0
    for _ in range(runs):
        got = run(feeds, {output: tuple(base.shape)})[output].astype(np.float64)
        zero = np.all(got == 0, axis=spatial)
        kept = np.all(np.isclose(got, scaled, rtol=1e-5, atol=1e-5), axis=spatial)
        mixed += int(np.sum(~(zero | kept)))
        dropped += int(np.sum(zero & ~kept))
        masks.add((got == 0).tobytes())
        zeros += float(np.mean(got == 0)) / runs
    decisions = runs * int(np.prod([base.shape[0], base.shape[axis]]))
    rate = dropped / decisions
    sd = (ratio * (1 - ratio) / decisions) ** 0.5
    problems = []
    if mixed:
        problems.append(f"{mixed} channel(s) neither all zero nor scaled by 1/(1-ratio)")
    if abs(rate - ratio) > SIGMAS * sd:
        problems.append(f"drop rate {rate:.3f} not within {SIGMAS:g} sd ({sd:.3f}) of {ratio}")
    if len(masks) == 1 and runs > 1:
        problems.append(f"the same mask on all {runs} runs")
    detail = (f"{runs} runs x {decisions // runs} channels: rate {rate:.3f} (want {ratio}, "
              f"sd {sd:.3f}), {len(masks)} distinct masks, {mixed} mixed channels, "
              f"{zeros:.3f} of all elements zero")
    return {"status": "FAIL" if problems else "ok",
            "detail": "; ".join(problems) + (f" ({detail})" if problems else detail),
            "rate": rate, "distinct_masks": len(masks), "mixed_channels": mixed,
            "zero_fraction": zeros}


def case_stage(workdir: Path, name: str, runs: int) -> int:
    """Convert case ``name`` with onnx2tf and run it; write ``<name>/result.json`` after every
    step (a crash keeps the steps before it)."""
    import numpy as np

    spec = json.loads((workdir / "build.json").read_text())["cases"][name]
    folder = workdir / name
    folder.mkdir(exist_ok=True)
    result: dict[str, Any] = {"steps": []}
    path = folder / "result.json"

    def step(label: str, **fields: Any) -> None:
        result["steps"].append({"step": label, **fields})
        path.write_text(json.dumps(result, indent=1))

    result["versions"] = installed("onnx2tf", "tensorflow", "ai-edge-litert", "onnx",
                                   "onnxruntime")
    feeds = dict(np.load(workdir / f"{name}.feeds.npz"))
    reference = dict(np.load(workdir / f"{name}.reference.npz"))

    os.chdir(folder)  # onnx2tf writes and looks for side files in the working directory
    _offline_calibration(folder)
    started = time.perf_counter()
    try:
        import onnx2tf

        onnx2tf.convert(
            input_onnx_file_path=str(workdir / spec["onnx"]), output_folder_path="tf",
            non_verbose=True, output_signaturedefs=True,
            copy_onnx_input_output_names_to_tflite=True,
            # static shapes from the feeds (a symbolic batch becomes BATCH)
            overwrite_input_shape=[f"{n}:{','.join(map(str, a.shape))}"
                                   for n, a in feeds.items() if a.ndim])
        tflite = sorted((folder / "tf").glob("*_float32.tflite"))
        if not tflite:
            raise FileNotFoundError("onnx2tf wrote no *_float32.tflite")
    except BaseException as error:  # noqa: BLE001 - onnx2tf may also sys.exit()
        step("onnx2tf", status="FAIL", detail=first_line(error),
             seconds=round(time.perf_counter() - started, 1),
             traceback=traceback.format_exc(limit=-3))
        return EXIT_OK
    step("onnx2tf", status="ok", seconds=round(time.perf_counter() - started, 1),
         detail=f"{tflite[0].name}, {tflite[0].stat().st_size // 1024} KiB")

    inference_feeds = dict(feeds)
    try:
        run = _Runner(tflite[0], inference_feeds)
    except Exception as error:  # noqa: BLE001
        step("load", status="FAIL", detail=first_line(error))
        return EXIT_OK
    layouts = ", ".join(f"{n} {layout}" for n, layout in run.layouts.items())
    # onnx2tf evaluates random ops once, at conversion: a .tflite without a RANDOM_* op has
    # its draws frozen into constants (one mask forever).
    random_ops = [op for op in run.ops if "RANDOM" in op or "MULTINOMIAL" in op]
    step("load", status="ok", ops=run.ops, random_ops=random_ops,
         detail=f"{run.kind}; inputs: {layouts}; {len(run.ops)} op types"
                + (f", random: {', '.join(random_ops) or 'none'}" if run.ops else ""))
    for label, check in (
            ("inference", lambda: _inference(run, inference_feeds, reference)),
            ("training", lambda: _training(run, inference_feeds, reference, spec["training"],
                                           runs))):
        if label == "training" and "training" not in spec:
            continue
        try:
            step(label, **check())
        except Exception as error:  # noqa: BLE001
            step(label, status="FAIL", detail=first_line(error))
    return EXIT_OK


# --------------------------------------------------------------------------- driver
# Runs anywhere (standard library only): sets up the venv, runs the stages, reports.

def ensure_venv(venv: Path, requirements: Path, log: Path) -> Path:
    """``venv``'s python, created or updated from ``requirements`` when its hash changed."""
    python = venv / "bin" / "python"
    stamp = venv / ".tflite-check-requirements.sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
    steps.append([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                  "-r", str(requirements)])
    for command in steps:
        print(f"tflite_check: {' '.join(command[-4:])} (log: {log})", file=sys.stderr)
        with log.open("a") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise CannotRun(f"setting up {venv} failed (exit {done.returncode}): "
                            f"{last_line(log.read_text())}")
    stamp.write_text(wanted + "\n")
    return python


def _stage(python: Path | str, arguments: list[str], log: Path, timeout: float
           ) -> tuple[int | None, str]:
    """Run this script's hidden stage in ``python``; (exit status or None on timeout, last
    line of its log)."""
    command = [str(python), str(Path(__file__).resolve()), *arguments]
    env = dict(os.environ, **QUIET_TF, PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)  # the two venvs must not see each other's packages
    with log.open("w") as out:
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:g} s"
    return done.returncode, last_line(log.read_text(errors="replace"))


def check(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every stage; the report (``--json``'s document)."""
    started = time.perf_counter()
    main_python = Path(args.main_python)
    if not main_python.exists():
        raise CannotRun(f"no main venv python at {main_python} (run scripts/bootstrap.sh)")
    python = ensure_venv(Path(args.venv), REQUIREMENTS, workdir / "pip.log")

    print("tflite_check: building the models with the main venv", file=sys.stderr)
    status, tail = _stage(main_python, ["--stage", "build", "--workdir", str(workdir),
                                        "--case", *args.cases],
                          workdir / "build.log", args.timeout)
    if status != 0 or not (workdir / "build.json").exists():
        raise CannotRun(f"the build stage died (exit {status}): {tail}")
    built = json.loads((workdir / "build.json").read_text())

    report: dict[str, Any] = {"venv": str(args.venv), "runs": args.runs,
                              "main_versions": built["versions"], "cases": []}
    for name in args.cases:
        spec = built["cases"][name]
        case: dict[str, Any] = {"name": name, "model": CASES[name], "steps": []}
        report["cases"].append(case)
        if "error" in spec:
            case["steps"].append({"step": "build", "status": "FAIL", "detail": spec["error"]})
            continue
        case["steps"].append({"step": "build", "status": "ok", "seconds": spec["seconds"],
                              "detail": f"{spec['built_by']} ({spec['seconds']} s)"})
        print(f"tflite_check: {name}: onnx2tf and the TFLite interpreter", file=sys.stderr)
        log = workdir / f"{name}.log"
        status, tail = _stage(python, ["--stage", "case", "--workdir", str(workdir),
                                       "--case", name, "--runs", str(args.runs)],
                              log, args.timeout)
        result_path = workdir / name / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {"steps": []}
        report.setdefault("versions", result.get("versions"))
        case["steps"] += result["steps"]
        failed = [s for s in result["steps"] if s["step"] == "onnx2tf" and s["status"] != "ok"]
        if failed:
            # onnx2tf names the ONNX node it failed on in its own log (nodes renamed by sng4onnx)
            node = re.findall(r"onnx_op_name: (\S+)", log.read_text(errors="replace"))
            if node:
                failed[0]["onnx_node"] = node[-1]
        if status != 0:
            case["steps"].append({"step": "process", "status": "FAIL",
                                  "detail": f"the case process ended with {status}: {tail}"})
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def table(report: dict[str, Any], width: int = 120) -> str:
    """The report as a fixed-width table: case, step, status, what happened (wrapped)."""
    rows = [("case", "step", "status", "detail")]
    for case in report["cases"]:
        for item in case["steps"]:
            detail = item.get("detail", "")
            if item.get("onnx_node"):
                detail += f" [onnx2tf failed at node {item['onnx_node']}]"
            rows.append((case["name"], item["step"], item["status"], detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = sum(widths) + 6
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
        wrapped = textwrap.wrap(row[3], max(40, width - indent)) or [""]
        lines.append(f"{head}  {wrapped[0]}".rstrip())
        lines += [" " * indent + more for more in wrapped[1:]]
    lines.append("")
    for where, versions in (("tflite venv", report.get("versions")),
                            ("main venv", report.get("main_versions"))):
        if versions:
            lines.append(f"{where}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"{report['seconds']} s in all")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 ran to the end (conversions that failed are in the report), "
               "1 could not run, 2 bad arguments. Needs network access to PyPI only the "
               "first time (to make the venv).")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--workdir", help="keep the models, logs and .tflite files here "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--venv", default=str(DEFAULT_VENV),
                        help="the onnx2tf virtualenv (default: %(default)s)")
    parser.add_argument("--main-python", default=str(MAIN_PYTHON),
                        help="python of the main venv (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=50,
                        help="training-mode runs of the inlined CNN (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds allowed per stage (default: %(default)s)")
    parser.add_argument("--case", dest="cases", nargs="+", choices=list(CASES),
                        default=list(CASES), help="the models to check (default: all)")
    parser.add_argument("--stage", choices=("build", "case"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.stage == "build":
        return build_stage(Path(args.workdir), args.cases)
    if args.stage == "case":
        return case_stage(Path(args.workdir), args.cases[0], args.runs)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tflite_check_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = check(args, workdir)
    except CannotRun as error:
        print(f"tflite_check: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=1) if args.json else table(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
