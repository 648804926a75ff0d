"""Benchmark of the native kernel against its anchors, measured in one process.

Rows (each a one-node model run through onnxruntime with pre-bound inputs and
outputs, so only the op itself is timed - no output is allocated or copied):

* ``floor`` - ORT's broadcast ``Mul`` of the data by a noise-shaped tensor:
  one read and one write of the data, the memory-bandwidth floor. For float16
  and bfloat16 data it is ``Mul`` on the same bits as int16 (``FLOOR_NOTE``);
* ``native_train`` / ``native_infer`` - SpatialDropout with the native library
  (inference on a graph input is a copy: onnxruntime never reuses a graph input);
* ``chain_floor`` / ``chain_infer`` - ``Mul -> Mul`` and ``Mul -> SpatialDropout
  (inference) -> Mul``: inside a graph the kernel runs in place (zero copy), so
  the second costs what the first does;
* ``typed_mul`` - ORT's broadcast ``Mul`` in a 16-bit data type (float16 and
  bfloat16 only), to show why it is not the floor;
* ``function_train`` / ``function_infer`` - the same models made portable, run
  without the library;
* ``dropout_train`` - ORT's built-in ``Dropout`` in training mode (one random
  number per element; the EliminateDropout optimizer disabled);
* ``extensions_pyop`` - the numpy reference as an onnxruntime-extensions Python
  op (outputs cross into ORT through Python lists).

The machine may be shared, so absolute times move with its load. The rows take
turns: each round runs every row once untimed (to warm its own tensors) and then
times it as the fastest of BEST_OF back-to-back runs, and a row's ratio is the
median over rounds of its time divided by its baseline's time in the same round
(``per_round_ratios``). A load change then moves both sides of a ratio alike.
Every session runs with intra-op spinning off (SPINNING_KEY says why).
"""

from __future__ import annotations

import os
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
#: ... and only on tensors up to this many elements (tolist() of 16M floats takes GBs).
EXTENSIONS_MAX_ELEMENTS = 1 << 23

#: The tensors measured by default: 16 MB (input and output fit this machine's 32 MB
#: last-level cache together) and 64 MB (they do not).
DEFAULT_SHAPES = ((32, 256, 512), (64, 512, 512))

#: float16/bfloat16: onnxruntime's CPU Mul in float16 converts element by element (several
#: times slower than memory) and it has none in bfloat16, so the floor multiplies the same
#: 16-bit patterns as int16: the same bytes read and written, in the same broadcast.
FLOOR_NOTE = "Mul on the same 16-bit patterns as int16"

ROWS = (
    ("floor", "ORT broadcast Mul (floor)"),
    ("native_train", "native kernel, training"),
    ("native_infer", "native kernel, inference (a copy)"),
    ("chain_floor", "Mul -> Mul"),
    ("chain_infer", "Mul -> native inference -> Mul (in place)"),
    ("typed_mul", "ORT broadcast Mul in the data type"),
    ("function_train", "function body, training (no library)"),
    ("function_infer", "function body, inference (no library)"),
    ("dropout_train", "ORT Dropout, training"),
    ("extensions_pyop", "onnxruntime-extensions Python op"),
)

#: What each row's ratio compares with (rows not named here: the floor).
BASELINES = {"chain_infer": "chain_floor", "chain_floor": "floor"}

#: Per-round speed-ups: (name, slower row, faster row).
SPEEDUPS = (
    ("dropout_vs_native", "dropout_train", "native_train"),
    ("function_vs_native", "function_train", "native_train"),
)

#: The performance goals (docs/native-kernel.md), checked on every result:
#: (name, text, value's source, limit, kind).
GOALS = (
    ("train", "native training / floor", ("ratio", "native_train"), 1.15, "max"),
    ("infer", "native inference / floor", ("ratio", "native_infer"), 1.10, "max"),
    ("infer_in_place", "native inference in a graph / Mul -> Mul", ("ratio", "chain_infer"),
     1.10, "max"),
    ("dropout", "ORT Dropout / native training", ("speedup", "dropout_vs_native"), 15.0, "min"),
    ("function", "function body / native training", ("speedup", "function_vs_native"), 4.0,
     "min"),
)


#: Every row has its own session, and by default an onnxruntime session's intra-op
#: threads spin after each parallel section before they sleep: about 2^20 pause
#: instructions, some 20 ms on this AMD EPYC and longer on CPUs with a slower pause. On
#: 2 cores the previous row's spinning thread took a core from the next row (native
#: training measured 1.2-1.4x the floor behind it, 0.7-0.8x with spinning off), so the
#: bench turns spinning off in every session, the floor's included.
SPINNING_KEY = "session.intra_op.allow_spinning"

#: Pause before each row's turn in a round (measure_in_rounds). With spinning off it is
#: only a margin; the MC bench, whose sessions spin, pauses longer.
SETTLE_SECONDS = 0.005

#: Each round times every row as the fastest of this many back-to-back runs (see
#: measure_in_rounds): single runs of a few milliseconds spread over 2x on this shared
#: 2-core machine, the fastest of three far less.
BEST_OF = 3

#: Tensors of the data's size the rows hold at once (inputs, pre-bound outputs, the chains'
#: intermediates, the function body's and Dropout's temporaries), for the memory check.
TENSOR_COPIES = 12


def check_fits(shape: Sequence[int], dtype: str) -> None:
    """Raise ValueError when the benchmark of ``shape`` would not fit in available memory."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise ValueError(f"--shape dimensions must be >= 0, got {list(shape)}")
        count *= dim
    needed = count * np.dtype(DTYPES[dtype][0]).itemsize * TENSOR_COPIES
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: let the allocation decide
        return
    if needed > available:
        raise ValueError(f"shape {list(shape)} {dtype}: the benchmark needs about "
                         f"{needed / 2**30:.1f} GiB ({TENSOR_COPIES} tensors of that size), "
                         f"{available / 2**30:.1f} GiB is available")


def rows_for(dtype: str) -> list[tuple[str, str]]:
    """The rows measured for ``dtype`` (``typed_mul`` only for 16-bit types)."""
    rows = []
    for name, label in ROWS:
        if name == "typed_mul" and dtype not in ("float16", "bfloat16"):
            continue
        if name == "floor" and dtype in ("float16", "bfloat16"):
            label = "ORT broadcast Mul on the int16 bits (floor)"
        rows.append((name, label))
    return rows


@dataclass
class Row:
    """One measured configuration. ``ratio`` is the median over rounds of this row's
    time over ``ratio_to``'s time in the same round; ``ratio_q1``/``ratio_q3`` are the
    quartiles of those per-round ratios."""

    name: str
    label: str
    median_ms: float | None = None
    min_ms: float | None = None
    ratio_to: str | None = None
    ratio: float | None = None
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    runs: int = 0
    error: str | None = None


@dataclass
class Goal:
    """One goal checked on a result; ``met`` is None when its rows could not run."""

    name: str
    text: str
    value: float | None
    limit: float
    kind: str  # "max": value <= limit; "min": value >= limit
    met: bool | None


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
    threads: int = 0
    floor: str = "Mul"
    rows: list[Row] = field(default_factory=list)
    speedups: dict[str, float | None] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)

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


def chain_model(shape: Sequence[int], noise: Sequence[int], elem: int,
                shared_axes: Sequence[int] | None = None, ratio: float = 0.5,
                training: bool | None = None) -> onnx.ModelProto:
    """``Mul -> Mul`` by a noise-shaped tensor, or with ``training`` given ``Mul ->
    SpatialDropout -> Mul``: the dropout's input is an intermediate used once, so
    onnxruntime may run it in place."""
    inputs, outputs = _io(elem, shape)
    inputs.append(oh.make_tensor_value_info("m", elem, list(noise)))
    nodes = [oh.make_node("Mul", ["x", "m"], ["t"])]
    initializers, domains = [], {}
    middle = "t"
    if training is not None:
        node = oh.make_node(spec.OP_TYPE, ["t", "ratio", "training_mode"], ["u"],
                            domain=spec.DOMAIN, seed=0)
        if shared_axes is not None:
            node.attribute.append(oh.make_attribute(spec.ATTR_SHARED_AXES, list(shared_axes),
                                                    attr_type=onnx.AttributeProto.INTS))
        nodes.append(node)
        initializers, domains, middle = (_scalars(ratio, training),
                                         {spec.DOMAIN: spec.OPSET_VERSION}, "u")
    nodes.append(oh.make_node("Mul", [middle, "m"], ["y"]))
    return _model(nodes, inputs, outputs, initializers, domains)


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
                  feeds: dict[str, np.ndarray], elem: int,
                  disabled_optimizers: Sequence[str] = ()) -> Callable[[], None]:
    """A function running the model once with pre-bound inputs and output ``y``."""
    kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    session = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                   providers=["CPUExecutionProvider"], **kwargs)
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
                      rounds: int, best_of: int = 1,
                      settle: float = SETTLE_SECONDS) -> dict[str, list[float]]:
    """Seconds per run of each runner. The rows take turns in ``rounds`` rounds, each
    row running a block of consecutive runs per round (after a pause of ``settle``
    seconds and one untimed run that re-warms its tensors): consecutive runs
    keep a row's tensors as warm in cache as a row measured alone, and the turns spread
    changes in machine load over all rows alike. With ``rounds == repeat`` every row is
    timed once per round. ``best_of`` > 1 runs every timed run that many times and
    keeps the fastest: the machine's interruptions only ever add time, so the fastest
    of a few back-to-back runs is the row's own cost."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    rounds = max(1, min(rounds, repeat))
    for r in range(rounds):
        block = repeat // rounds + (1 if r < repeat % rounds else 0)
        for name, run in runners.items():
            time.sleep(settle)
            run()  # re-warm after the other rows ran
            for _ in range(block):
                fastest = float("inf")
                for _ in range(max(1, best_of)):
                    start = time.perf_counter()
                    run()
                    fastest = min(fastest, time.perf_counter() - start)
                times[name].append(fastest)
    return times


def per_round_ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """``times[r] / baseline[r]`` for every round ``r``, sorted."""
    return sorted(t / b for t, b in zip(times, baseline, strict=True))


def _quartiles(sorted_values: Sequence[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(sorted_values, n=4, method="inclusive") \
        if len(sorted_values) > 1 else [sorted_values[0]] * 3
    return q1, median, q3


def _error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def run_bench(
    shape: Sequence[int] = DEFAULT_SHAPES[0],
    dtype: str = "float32",
    shared_axes: Sequence[int] | None = (1,),
    repeat: int = 30,
    warmup: int = 3,
    ratio: float = 0.5,
    include_extensions: bool = True,
    threads: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure every row on one shape and dtype in ``repeat`` rounds (every row timed
    once per round); ``threads`` sets every session's intra-op threads (0: onnxruntime's
    default). See the module docstring."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    np_dtype, elem = DTYPES[dtype]
    shape = [int(d) for d in shape]
    noise = list(spec.noise_shape(shape, shared_axes))
    spec.check_ratio(ratio)
    check_fits(shape, dtype)
    rng = np.random.default_rng(0)
    x = (rng.random(shape, dtype=np.float32) + 1.0).astype(np_dtype)
    mul_by = (rng.random(noise, dtype=np.float32) * 2.0).astype(np_dtype)
    sixteen_bit = dtype in ("float16", "bfloat16")
    result = BenchResult(shape=shape, dtype=dtype,
                         shared_axes=None if shared_axes is None else [int(a) for a in shared_axes],
                         noise_shape=noise, ratio=ratio, repeat=repeat,
                         onnxruntime=ort.__version__, threads=threads,
                         floor=FLOOR_NOTE if sixteen_bit else "Mul")

    native.get_library_path()  # what is measured: a missing library fails the run, not a row

    def options(native_library: bool = False) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry(SPINNING_KEY, "0")  # see SPINNING_KEY
        return native.register_kernel(so) if native_library else so

    # The floor of a 16-bit type: the same bits as int16 (x.view keeps the buffer).
    floor_feeds = ({"x": x.view(np.int16), "m": (rng.integers(0, 3, noise)).astype(np.int16)}
                   if sixteen_bit else {"x": x, "m": mul_by})
    floor_elem = TensorProto.INT16 if sixteen_bit else elem
    train = spatial_dropout_model(shape, elem, shared_axes, ratio, True)
    plans: dict[str, Callable[[], tuple]] = {
        "floor": lambda: (floor_model(shape, noise, floor_elem), options(), floor_feeds,
                          floor_elem),
        "native_train": lambda: (train, options(True), {"x": x}, elem),
        "native_infer": lambda: (spatial_dropout_model(shape, elem, shared_axes, ratio, False),
                                 options(True), {"x": x}, elem),
        "chain_floor": lambda: (chain_model(shape, noise, elem), options(),
                                {"x": x, "m": mul_by}, elem),
        "chain_infer": lambda: (chain_model(shape, noise, elem, shared_axes, ratio, False),
                                options(True), {"x": x, "m": mul_by}, elem),
        "typed_mul": lambda: (floor_model(shape, noise, elem), options(),
                              {"x": x, "m": mul_by}, elem),
        "function_train": lambda: (make_portable(train), options(), {"x": x}, elem),
        "function_infer": lambda: (make_portable(spatial_dropout_model(
            shape, elem, shared_axes, ratio, False)), options(), {"x": x}, elem),
        "dropout_train": lambda: (dropout_model(shape, elem, ratio), options(), {"x": x}, elem,
                                  ("EliminateDropout",)),
        "extensions_pyop": lambda: (extensions_model(shape, dtype, shared_axes, 0, "bench",
                                                     ratio=ratio, training=True),
                                    extensions_session_options(), {"x": x}, elem),
    }
    runners: dict[str, Callable[[], None]] = {}
    for name, label in rows_for(dtype):
        row = Row(name, label, ratio_to=BASELINES.get(name, "floor"))
        result.rows.append(row)
        if name == "extensions_pyop" and not include_extensions:
            row.error = "skipped"
            continue
        if name == "extensions_pyop" and x.size > EXTENSIONS_MAX_ELEMENTS:
            row.error = (f"skipped: {x.size} elements, the Python op runs on at most "
                         f"{EXTENSIONS_MAX_ELEMENTS}")
            continue
        try:
            runners[name] = _timed_runner(*plans[name]())
        except Exception as err:  # noqa: BLE001 - a row the runtime cannot run is reported
            row.error = _error_text(err)
    # The Python op is ~500x slower than the rest: timed on its own, fewer times.
    slow = {n: runners.pop(n) for n in ("extensions_pyop",) if n in runners}
    if progress:
        progress(f"{shape} {dtype}: {len(runners)} rows, {repeat} rounds")
    times = measure_in_rounds(runners, repeat, warmup, repeat, best_of=BEST_OF)
    for name, run in slow.items():
        if progress:
            progress(result.row(name).label)
        runs = min(repeat, EXTENSIONS_MAX_REPEAT)
        times |= measure_in_rounds({name: run}, runs, min(warmup, 1), 1)
    _summarise(result, times)
    return result


def _summarise(result: BenchResult, times: dict[str, list[float]]) -> None:
    """Medians, per-round ratios, speed-ups and goals of ``result`` from ``times``."""
    for name, seconds in times.items():
        row = result.row(name)
        row.median_ms, row.runs = statistics.median(seconds) * 1e3, len(seconds)
        row.min_ms = min(seconds) * 1e3
    for row in result.rows:
        base = times.get(row.ratio_to or "")
        mine = times.get(row.name)
        if not mine or not base:
            continue
        if len(mine) == len(base):
            row.ratio_q1, row.ratio, row.ratio_q3 = _quartiles(per_round_ratios(mine, base))
        else:  # timed on its own (the Python op): medians
            row.ratio = statistics.median(mine) / statistics.median(base)
    for name, slower, faster in SPEEDUPS:
        if slower in times and faster in times:
            result.speedups[name] = statistics.median(
                per_round_ratios(times[slower], times[faster]))
        else:
            result.speedups[name] = None
    for name, text, (source, key), limit, kind in GOALS:
        value = (result.row(key).ratio if source == "ratio" else result.speedups.get(key))
        met = None if value is None else (value <= limit if kind == "max" else value >= limit)
        result.goals.append(Goal(name, text, value, limit, kind, met))


def format_table(result: BenchResult) -> str:
    """Human-readable table of ``result``."""
    axes = "default" if result.shared_axes is None else result.shared_axes
    threads = "default" if not result.threads else str(result.threads)
    lines = [f"SpatialDropout bench: shape {result.shape} {result.dtype}, shared_axes {axes} "
             f"(noise {result.noise_shape}), ratio {result.ratio}, onnxruntime "
             f"{result.onnxruntime}, intra-op threads {threads}",
             f"  {result.repeat} rounds, every row timed once per round (the fastest of "
             f"{BEST_OF} runs), intra-op spinning off; ratio: median of the "
             f"per-round ratios (quartiles); floor: {result.floor}"]
    width = max(len(r.label) for r in result.rows)
    for row in result.rows:
        if row.median_ms is None:
            lines.append(f"  {row.label:<{width}}  n/a ({row.error})")
            continue
        ratio = ""
        if row.ratio is not None:
            base = "floor" if row.ratio_to == "floor" else row.ratio_to
            spread = ("" if row.ratio_q1 is None or row.name == row.ratio_to
                      else f" ({row.ratio_q1:.2f}-{row.ratio_q3:.2f})")
            ratio = f"{row.ratio:8.2f}x {base}{spread}"
        runs = "" if row.runs == result.repeat else f"  ({row.runs} runs)"
        lines.append(f"  {row.label:<{width}}  {row.median_ms:10.3f} ms  min {row.min_ms:9.3f} ms"
                     f"  {ratio}{runs}")
    lines.append("  goals:")
    text_width = max(len(goal.text) for goal in result.goals)
    for goal in result.goals:
        sign = "<=" if goal.kind == "max" else ">="
        if goal.value is None:
            lines.append(f"    {goal.text:<{text_width}}  n/a (a row did not run)")
            continue
        verdict = "met" if goal.met else "NOT met"
        lines.append(f"    {goal.text:<{text_width}}  {goal.value:6.2f}x {sign} {goal.limit:<5g}"
                     f"  {verdict}")
    return "\n".join(lines)
