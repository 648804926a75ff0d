"""Benchmark of the native kernel against its anchors, measured in one process.

Rows (each a one-node model run through onnxruntime with pre-bound inputs and
outputs, so only the op itself is timed):

* ``floor`` - ORT's broadcast ``Mul`` of the data by a noise-shaped tensor:
  one read and one write of the data, the memory-bandwidth floor;
* ``native_train`` / ``native_infer`` - SpatialDropout with the native library;
* ``function_train`` - the same model made portable, run without the library;
* ``dropout_train`` - ORT's built-in ``Dropout`` in training mode (one random
  number per element);
* ``extensions_pyop`` - the numpy reference as an onnxruntime-extensions Python
  op (outputs cross into ORT through Python lists).

Each row reports the median of ``repeat`` timed runs after ``warmup`` runs. The
rows take turns in a few rounds of consecutive runs, so a change in machine load
affects them alike while each row's tensors stay as warm as when timed alone.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh

from . import native, reference, spec
from .function_body import make_portable

DTYPES = {
    "float16": (np.dtype(np.float16), TensorProto.FLOAT16),
    "float32": (np.dtype(np.float32), TensorProto.FLOAT),
    "float64": (np.dtype(np.float64), TensorProto.DOUBLE),
    "bfloat16": (np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16),
}

#: onnxruntime-extensions Python ops all live in this domain.
EXTENSIONS_DOMAIN = "ai.onnx.contrib"
EXTENSIONS_OP_TYPE = "SpatialDropoutNumpy"
#: The Python op runs at most this many timed repeats (one run takes ~0.4 s).
EXTENSIONS_MAX_REPEAT = 5

ROWS = (
    ("floor", "ORT broadcast Mul (floor)"),
    ("native_train", "native kernel, training"),
    ("native_infer", "native kernel, inference"),
    ("function_train", "function body, training (no library)"),
    ("dropout_train", "ORT Dropout, training"),
    ("extensions_pyop", "onnxruntime-extensions Python op"),
)


@dataclass
class Row:
    """One measured configuration."""

    name: str
    label: str
    median_ms: float | None = None
    min_ms: float | None = None
    ratio_to_floor: float | None = None
    runs: int = 0
    error: str | None = None


@dataclass
class BenchResult:
    """All rows of one run, with the setup they were measured on."""

    shape: list[int]
    dtype: str
    shared_axes: list[int] | None
    noise_shape: list[int]
    ratio: float
    repeat: int
    onnxruntime: str
    rows: list[Row] = field(default_factory=list)

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# --- Models -------------------------------------------------------------------


def _model(nodes: list, inputs: list, outputs: list, initializers: list, domains: dict[str, int],
           opset: int = 18) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    imports = [oh.make_opsetid("", opset)] + [oh.make_opsetid(d, v) for d, v in domains.items()]
    return oh.make_model(graph, opset_imports=imports)


def _io(elem: int, shape: Sequence[int]) -> tuple[list, list]:
    return ([oh.make_tensor_value_info("x", elem, list(shape))],
            [oh.make_tensor_value_info("y", elem, list(shape))])


def _scalars(ratio: float, training: bool) -> list[onnx.TensorProto]:
    return [oh.make_tensor("ratio", TensorProto.FLOAT, [], [ratio]),
            oh.make_tensor("training_mode", TensorProto.BOOL, [], [training])]


def floor_model(shape: Sequence[int], noise: Sequence[int], elem: int) -> onnx.ModelProto:
    """y = x * m with m shaped like the noise: one read and one write of x."""
    inputs, outputs = _io(elem, shape)
    inputs.append(oh.make_tensor_value_info("m", elem, list(noise)))
    return _model([oh.make_node("Mul", ["x", "m"], ["y"])], inputs, outputs, [], {})


def spatial_dropout_model(shape: Sequence[int], elem: int, shared_axes: Sequence[int] | None,
                          ratio: float, training: bool, seed: int | None = 0) -> onnx.ModelProto:
    """One SpatialDropout node with constant ratio and training_mode."""
    node = oh.make_node(spec.OP_TYPE, ["x", "ratio", "training_mode"], ["y"], domain=spec.DOMAIN)
    if shared_axes is not None:
        node.attribute.append(oh.make_attribute(spec.ATTR_SHARED_AXES, list(shared_axes),
                                                attr_type=onnx.AttributeProto.INTS))
    if seed is not None:
        node.attribute.append(oh.make_attribute(spec.ATTR_SEED, seed))
    inputs, outputs = _io(elem, shape)
    return _model([node], inputs, outputs, _scalars(ratio, training),
                  {spec.DOMAIN: spec.OPSET_VERSION})


def dropout_model(shape: Sequence[int], elem: int, ratio: float) -> onnx.ModelProto:
    """ORT's own Dropout-13 in training mode."""
    node = oh.make_node("Dropout", ["x", "ratio", "training_mode"], ["y"])
    inputs, outputs = _io(elem, shape)
    return _model([node], inputs, outputs, _scalars(ratio, True), {})


# --- onnxruntime-extensions Python op ----------------------------------------------

_pyop_lock = threading.Lock()
_pyop_registered = False
_pyop_calls: dict[str, int] = {}


def _axes_to_text(shared_axes: Sequence[int] | None) -> str:
    # Python-op attributes are int, float or string only: the axes travel as text.
    return "default" if shared_axes is None else ",".join(str(int(a)) for a in shared_axes)


def _axes_from_text(text: str) -> list[int] | None:
    return None if text == "default" else [int(a) for a in text.split(",") if a]


def register_extensions_op() -> None:
    """Register the numpy reference as the Python op ``ai.onnx.contrib.SpatialDropoutNumpy``.

    Inputs data (float or double), ratio (double), training_mode (bool);
    outputs output and mask; attributes ``shared_axes`` (text, see
    ``extensions_model``), ``seed`` and ``stream``. Python ops keep no per-node
    state, so runs are counted per ``stream`` attribute: the k-th run of a
    stream uses ``call_index=k``, as the native kernel counts runs per node.
    """
    global _pyop_registered
    with _pyop_lock:
        if _pyop_registered:
            return
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        def spatial_dropout_numpy(data: np.ndarray, ratio: np.ndarray, training_mode: np.ndarray,
                                  **attrs: object) -> tuple[np.ndarray, np.ndarray]:
            stream = str(attrs["stream"])
            with _pyop_lock:
                call_index = _pyop_calls.get(stream, 0)
                _pyop_calls[stream] = call_index + 1
            return reference.spatial_dropout(
                data, float(ratio), bool(training_mode), _axes_from_text(str(attrs["shared_axes"])),
                seed=int(attrs["seed"]), call_index=call_index, return_mask=True)

        for suffix, data_type in (("", PyCustomOpDef.dt_float), ("64", PyCustomOpDef.dt_double)):
            onnx_op(op_type=EXTENSIONS_OP_TYPE + suffix,
                    inputs=[data_type, PyCustomOpDef.dt_double, PyCustomOpDef.dt_bool],
                    outputs=[data_type, PyCustomOpDef.dt_bool],
                    attrs={"shared_axes": PyCustomOpDef.dt_string,
                           "seed": PyCustomOpDef.dt_int64,
                           "stream": PyCustomOpDef.dt_string})(spatial_dropout_numpy)
        _pyop_registered = True


def extensions_model(shape: Sequence[int], dtype: str, shared_axes: Sequence[int] | None,
                     seed: int, stream: str, with_mask: bool = False,
                     ratio: float | None = None, training: bool | None = None) -> onnx.ModelProto:
    """A model running the Python op; ``ratio``/``training`` None makes them graph inputs."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"the Python op is registered for float32 and float64, not {dtype}")
    elem = DTYPES[dtype][1]
    op_type = EXTENSIONS_OP_TYPE + ("64" if dtype == "float64" else "")
    node = oh.make_node(op_type, ["x", "ratio", "training_mode"], ["y", "mask"],
                        domain=EXTENSIONS_DOMAIN, shared_axes=_axes_to_text(shared_axes),
                        seed=seed, stream=stream)
    inputs, outputs = _io(elem, shape)
    initializers = []
    if ratio is None:
        inputs.append(oh.make_tensor_value_info("ratio", TensorProto.DOUBLE, []))
    else:
        initializers.append(oh.make_tensor("ratio", TensorProto.DOUBLE, [], [ratio]))
    if training is None:
        inputs.append(oh.make_tensor_value_info("training_mode", TensorProto.BOOL, []))
    else:
        initializers.append(oh.make_tensor("training_mode", TensorProto.BOOL, [], [training]))
    if with_mask:
        noise = spec.noise_shape(shape, shared_axes)
        outputs.append(oh.make_tensor_value_info("mask", TensorProto.BOOL, list(noise)))
    return _model([node], inputs, outputs, initializers, {EXTENSIONS_DOMAIN: 1})


def extensions_session_options() -> ort.SessionOptions:
    """SessionOptions with onnxruntime-extensions (and so the Python op) registered."""
    from onnxruntime_extensions import get_library_path

    register_extensions_op()
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return so


# --- Timing -----------------------------------------------------------------------


def _ortvalue(array: np.ndarray, elem: int) -> ort.OrtValue:
    if array.dtype == ml_dtypes.bfloat16:  # onnxruntime's Python API has no bfloat16 arrays
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), elem)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _timed_runner(model: onnx.ModelProto, so: ort.SessionOptions | None,
                  feeds: dict[str, np.ndarray], elem: int) -> Callable[[], None]:
    """A function running the model once with pre-bound inputs and output."""
    session = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                   providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    values = {name: _ortvalue(array, elem if array.dtype.kind == "f" or
                              array.dtype == ml_dtypes.bfloat16 else 0)
              for name, array in feeds.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    x = feeds["x"]
    output = _ortvalue(np.empty_like(x), elem)
    binding.bind_ortvalue_output("y", output)
    for extra in session.get_outputs()[1:]:
        binding.bind_output(extra.name)

    def run() -> None:
        session.run_with_iobinding(binding)

    run.keep_alive = (session, binding, values, output)  # type: ignore[attr-defined]
    return run


def measure_in_rounds(runners: dict[str, Callable[[], None]], repeat: int, warmup: int,
                       rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each runner. The rows take turns in ``rounds`` rounds, each
    row running a block of consecutive runs per round: consecutive runs keep a row's
    tensors as warm in cache as a row measured alone, and the turns spread changes in
    machine load over all rows alike."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    rounds = max(1, min(rounds, repeat))
    for r in range(rounds):
        block = repeat // rounds + (1 if r < repeat % rounds else 0)
        for name, run in runners.items():
            run()  # re-warm after the other rows ran
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def run_bench(
    shape: Sequence[int] = (32, 256, 512),
    dtype: str = "float32",
    shared_axes: Sequence[int] | None = (1,),
    repeat: int = 30,
    warmup: int = 3,
    ratio: float = 0.5,
    include_extensions: bool = True,
    rounds: int = 5,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure every row on one shape and dtype; see the module docstring."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    np_dtype, elem = DTYPES[dtype]
    shape = [int(d) for d in shape]
    noise = list(spec.noise_shape(shape, shared_axes))
    spec.check_ratio(ratio)
    rng = np.random.default_rng(0)
    x = (rng.random(shape, dtype=np.float32) + 1.0).astype(np_dtype)
    mul_by = (rng.random(noise, dtype=np.float32) * 2.0).astype(np_dtype)
    result = BenchResult(shape=shape, dtype=dtype,
                         shared_axes=None if shared_axes is None else [int(a) for a in shared_axes],
                         noise_shape=noise, ratio=ratio, repeat=repeat,
                         onnxruntime=ort.__version__)
    native_so = native.session_options()
    train = spatial_dropout_model(shape, elem, shared_axes, ratio, True)
    plans: dict[str, Callable[[], tuple[onnx.ModelProto, ort.SessionOptions | None, dict]]] = {
        "floor": lambda: (floor_model(shape, noise, elem), None, {"x": x, "m": mul_by}),
        "native_train": lambda: (train, native_so, {"x": x}),
        "native_infer": lambda: (spatial_dropout_model(shape, elem, shared_axes, ratio, False),
                                 native_so, {"x": x}),
        "function_train": lambda: (make_portable(train), None, {"x": x}),
        "dropout_train": lambda: (dropout_model(shape, elem, ratio), None, {"x": x}),
        "extensions_pyop": lambda: (extensions_model(shape, dtype, shared_axes, 0, "bench",
                                                     ratio=ratio, training=True),
                                    extensions_session_options(), {"x": x}),
    }
    runners: dict[str, Callable[[], None]] = {}
    for name, label in ROWS:
        row = Row(name, label)
        result.rows.append(row)
        if name == "extensions_pyop" and not include_extensions:
            row.error = "skipped"
            continue
        try:
            model, so, feeds = plans[name]()
            runners[name] = _timed_runner(model, so, feeds, elem)
        except Exception as err:  # noqa: BLE001 - a row the runtime cannot run is reported
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    # The Python op is ~500x slower than the rest: timed on its own, fewer times.
    slow = {n: runners.pop(n) for n in ("extensions_pyop",) if n in runners}
    if progress:
        progress(f"{len(runners)} rows, {repeat} runs each in {rounds} rounds")
    times = measure_in_rounds(runners, repeat, warmup, rounds)
    for name, run in slow.items():
        if progress:
            progress(result.row(name).label)
        runs = min(repeat, EXTENSIONS_MAX_REPEAT)
        times |= measure_in_rounds({name: run}, runs, min(warmup, 1), 1)
    for name, seconds in times.items():
        row = result.row(name)
        row.median_ms, row.runs = statistics.median(seconds) * 1e3, len(seconds)
        row.min_ms = min(seconds) * 1e3
    floor_ms = result.row("floor").median_ms
    for row in result.rows:
        if floor_ms and row.median_ms is not None:
            row.ratio_to_floor = row.median_ms / floor_ms
    return result


def format_table(result: BenchResult) -> str:
    """Human-readable table of ``result``."""
    axes = "default" if result.shared_axes is None else result.shared_axes
    lines = [f"SpatialDropout bench: shape {result.shape} {result.dtype}, shared_axes {axes} "
             f"(noise {result.noise_shape}), ratio {result.ratio}, onnxruntime "
             f"{result.onnxruntime}, median of {result.repeat} runs"]
    width = max(len(r.label) for r in result.rows)
    for row in result.rows:
        if row.median_ms is None:
            lines.append(f"  {row.label:<{width}}  n/a ({row.error})")
            continue
        ratio = "" if row.ratio_to_floor is None else f"{row.ratio_to_floor:8.2f}x floor"
        runs = "" if row.runs == result.repeat else f"  ({row.runs} runs)"
        lines.append(f"  {row.label:<{width}}  {row.median_ms:10.3f} ms  {ratio}"
                     f"  (min {row.min_ms:.3f} ms){runs}")
    return "\n".join(lines)
