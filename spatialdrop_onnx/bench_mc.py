"""Benchmark of Monte-Carlo dropout: one call of the MC model vs N ``session.run`` calls.

For each case (a model with dropout, the feeds of one batch), four rows, all in
onnxruntime sessions made by :func:`~spatialdrop_onnx.inference_session` with
the same options (native kernel, ``EliminateDropout`` off, default threads):

* ``python_loop`` - N ``session.run`` calls of the source model with
  ``training_mode`` true, from Python (what users write today);
* ``mc_batch`` - one call of ``monte_carlo(model, samples=N, strategy="batch")``;
* ``mc_loop`` - one call of ``monte_carlo(model, samples=N, strategy="loop")``;
* ``one_big_call`` - the yardstick: one call of the *source* model on the batch
  repeated N times (``training_mode`` true). It does the arithmetic of N samples
  in one run with no MC machinery, so its speed-up is what onnxruntime itself
  gains from one large call over N small ones; batch folding can only beat it by
  running a shared prefix once.

Time is the minimum and the median of ``repeat`` timed units (one unit = the N
samples) after warm-up runs. The rows take turns, one unit each per round, so the
units of a round run back to back under the same machine load; the speed-up of a
row is the median over rounds of (python_loop's unit / the row's unit), which a
busy machine disturbs far less than the times themselves; the goals compare rows
the same way (``batch_vs_yardstick``, ``batch_vs_loop``: medians of per-round time
ratios). Peak memory is measured first, each row in a forked child that has not run
anything yet: the child's high-water resident set (``VmHWM``) after building the
session and running one unit, minus its resident set when it started.

Each case also says what ``strategy="auto"`` builds for the model told the case's batch
size (``batch_size``) and why (:func:`~spatialdrop_onnx.passes.monte_carlo.choose`: folding
where all N x B rows fit the cache, else a Loop that folds as many samples per iteration
as fit, decided at run time from the batch; not told, auto builds that Loop, the
``mc_loop`` row), and the goals say whether it is the faster of the two strategies at the
case's batch (within 5 %: a tie). With ``runs`` > 1 the whole
benchmark runs that many times and :func:`format_table` prints ranges over the runs,
with the machine's load average before each run.

Cases: two small CNNs with SpatialDropout2D built here (:func:`cnn_model`), and any
model passed in (``bench --mc --seed-model``: the converted seed model over 1, 8, 64
and 512 token sequences; ``scripts/bench_mc.py`` converts it and runs all).
"""

from __future__ import annotations

import os
import pickle
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh

from . import spec
from .bench import measure_in_rounds
from .graph import TRAINING_MODE
from .passes.monte_carlo import monte_carlo
from .sessions import inference_session

ROWS = (
    ("python_loop", "N session.run calls from Python"),
    ("mc_batch", "MC model, batch folding, one call"),
    ("mc_loop", "MC model, Loop, one call"),
    ("one_big_call", "yardstick: source, one call on N x the batch"),
)

#: Pause before each row's turn. The rows keep onnxruntime's default spinning (the N
#: calls profit from it, as in users' code), but each row has its own session, whose
#: threads spin some 20 ms after a run on this CPU: without the pause the previous row's
#: spinning thread took a core from the next row (the Loop on the early-dropout CNN
#: measured 0.97x the N calls behind the folded row, 1.4x on its own).
SETTLE_SECONDS = 0.1

#: Goal: batch folding's time at most this many times the yardstick's (one call on N x the
#: batch is what one call can reach with no prefix to share).
BATCH_VS_YARDSTICK = 1.05
#: Goal: the Loop no slower than the N calls (its speed-up at least this).
LOOP_SPEEDUP = 1.0
#: Strategies closer than this (time ratio) are a tie: either choice of ``auto`` is right.
TIE = 1.05


@dataclass
class McRow:
    """One measured configuration of one case."""

    name: str
    label: str
    median_ms: float | None = None
    min_ms: float | None = None
    speedup: float | None = None  # median over rounds of python_loop's time / this row's
    peak_mb: float | None = None
    error: str | None = None


@dataclass
class McCase:
    """One model and its rows."""

    name: str
    description: str
    batch: int
    rows: list[McRow] = field(default_factory=list)
    run: int = 0  # which run of the benchmark (0-based)
    auto: str | None = None  # what strategy="auto" builds for this model, told the batch
    auto_reason: str | None = None
    fold_rows: int | None = None  # rows up to which all N folded samples fit the budget
    #: Median over rounds of (mc_batch's time / one_big_call's) and (mc_batch's / mc_loop's).
    batch_vs_yardstick: float | None = None
    batch_vs_loop: float | None = None

    @property
    def faster(self) -> str | None:
        """The faster strategy here ("batch", "loop"), "tie" within TIE, None if unmeasured."""
        ratio = self.batch_vs_loop
        if ratio is None:
            return None
        return "tie" if 1 / TIE <= ratio <= TIE else "batch" if ratio < 1 else "loop"

    def row(self, name: str) -> McRow:
        """The row called ``name``."""
        return next(r for r in self.rows if r.name == name)


@dataclass
class McBenchResult:
    """Every case of one run, with the setup they were measured on."""

    samples: int
    repeat: int
    onnxruntime: str
    cpu_count: int
    cases: list[McCase] = field(default_factory=list)  # every run's, in order
    runs: int = 1
    #: The 1-minute load average before each run (the bench's own previous run counts in
    #: all but the first).
    loads: list[float] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether something else kept the machine busy before the first run."""
        return bool(self.loads) and self.loads[0] >= max(1, self.cpu_count) / 4

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# --- Cases ------------------------------------------------------------------------


def cnn_model(channels: int = 16, size: int = 16, ratio: float = 0.25,
              late: bool = False) -> onnx.ModelProto:
    """A small image classifier with channel dropout (SpatialDropout2D on NCHW).

    x[B,3,size,size] -> Conv3x3(channels) -> Relu -> Conv3x3(2*channels, stride 2) -> Relu
    -> global average pool -> Gemm(10) -> Softmax, with fixed random weights and the
    ``training_mode`` switch (default false). The SpatialDropout(ratio, default axes) sits
    after the first conv, or with ``late`` after the second (a dropout before the head, as
    MC-dropout models often have it: the convolutions before it are the same in every sample).
    """
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        values = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32)
        return onnx.numpy_helper.from_array(values, name)

    wide = 2 * channels
    initializers = [
        weight("w1", channels, 3, 3, 3), weight("w2", wide, channels, 3, 3),
        weight("w3", 10, wide), onnx.numpy_helper.from_array(np.zeros(10, np.float32), "b3"),
        oh.make_tensor("ratio", TensorProto.FLOAT, [], [ratio]),
        oh.make_tensor(TRAINING_MODE, TensorProto.BOOL, [], [False]),
    ]
    conv1 = oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])
    conv2 = oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2])
    if late:
        nodes = [conv1, oh.make_node("Relu", ["c1"], ["r1"]), conv2,
                 _dropout("c2", "d2"), oh.make_node("Relu", ["d2"], ["r2"])]
    else:
        nodes = [conv1, _dropout("c1", "d1"), oh.make_node("Relu", ["d1"], ["r1"]), conv2,
                 oh.make_node("Relu", ["c2"], ["r2"])]
    nodes += [
        oh.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        oh.make_node("Flatten", ["pooled"], ["flat"]),
        oh.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
        oh.make_node("Softmax", ["logits"], ["probs"]),
    ]
    graph = oh.make_graph(
        nodes, "cnn_spatial_dropout",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size]),
         oh.make_tensor_value_info(TRAINING_MODE, TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17),
                                               oh.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION)])


def _dropout(data: str, output: str) -> onnx.NodeProto:
    return oh.make_node(spec.OP_TYPE, [data, "ratio", TRAINING_MODE], [output],
                        domain=spec.DOMAIN)


def cnn_feeds(batch: int, size: int = 16) -> dict[str, np.ndarray]:
    """One batch of images for :func:`cnn_model`."""
    return {"x": np.random.default_rng(1).random((batch, 3, size, size), dtype=np.float32)}


def token_feeds(model: onnx.ModelProto, batch: int, vocabulary: int = 10) -> dict[str, np.ndarray]:
    """Token ids in [0, vocabulary) for every integer input (the seed model: 10 tokens)."""
    rng = np.random.default_rng(2024)
    feeds = {}
    for info in model.graph.input:
        if info.name == TRAINING_MODE:
            continue
        dims = [batch] + [d.dim_value for d in info.type.tensor_type.shape.dim[1:]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            feeds[info.name] = rng.integers(0, vocabulary, size=dims).astype(dtype)
        else:
            feeds[info.name] = rng.random(dims).astype(dtype)
    return feeds


# --- Measuring --------------------------------------------------------------------------


def _unit(name: str, source: bytes, mc: dict[str, bytes], feeds: dict[str, np.ndarray],
          samples: int) -> Callable[[], None]:
    """A function computing the N samples once, the way row ``name`` does."""
    if name == "python_loop":
        session = inference_session(onnx.ModelProto.FromString(source))
        train = dict(feeds, **{TRAINING_MODE: np.array(True)})

        def run_loop() -> None:
            for _ in range(samples):
                session.run(None, train)

        return run_loop
    if name == "one_big_call":
        session = inference_session(onnx.ModelProto.FromString(source))
        repeated = {key: np.concatenate([value] * samples) for key, value in feeds.items()}
        repeated[TRAINING_MODE] = np.array(True)
        return lambda: session.run(None, repeated)
    session = inference_session(onnx.ModelProto.FromString(mc[name]))
    return lambda: session.run(None, feeds)


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field_name} in /proc/self/status")


def _peak_mb(build: Callable[[], Callable[[], None]]) -> float | None:
    """Extra high-water resident memory of building and running one unit, in a fresh child."""
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/status"):
        return None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, leave
        os.close(read_fd)
        value: object = None
        try:
            start = _rss_kb("VmRSS")
            build()()
            value = (_rss_kb("VmHWM") - start) / 1024
        except BaseException as err:  # noqa: BLE001 - reported as text
            value = f"{type(err).__name__}: {err}"
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(pickle.dumps(value))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    value = pickle.loads(payload) if payload else "the child died"  # noqa: S301 - our child
    if isinstance(value, str):
        raise RuntimeError(value)
    return float(value)


def _mc_models(model: onnx.ModelProto, samples: int) -> tuple[dict[str, bytes], dict[str, str]]:
    models, errors = {}, {}
    for name, strategy in (("mc_batch", "batch"), ("mc_loop", "loop")):
        try:
            built = monte_carlo(model, samples=samples, strategy=strategy).model
            models[name] = built.SerializeToString()
        except Exception as err:  # noqa: BLE001 - a strategy the model refuses is reported
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return models, errors


def run_case(name: str, description: str, model: onnx.ModelProto,
             feeds: dict[str, np.ndarray], samples: int, repeat: int, warmup: int = 2,
             progress: Callable[[str], None] | None = None) -> McCase:
    """Measure the three rows of one case (memory first, in children; then time, here)."""
    batch = int(next(iter(feeds.values())).shape[0])
    case = McCase(name, description, batch)
    source = model.SerializeToString()
    mc, errors = _mc_models(model, samples)
    try:
        report = monte_carlo(model, samples=samples, batch_size=batch).report
        case.auto, case.auto_reason = report.strategy, report.reason
        case.fold_rows = report.fold_rows
    except Exception as err:  # noqa: BLE001 - reported in the case
        case.auto_reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    for row_name, label in ROWS:
        row = McRow(row_name, label, error=errors.get(row_name))
        case.rows.append(row)
        if row.error:
            continue
        if progress:
            progress(f"{name}: peak memory of {label}")
        try:
            row.peak_mb = _peak_mb(lambda n=row_name: _unit(n, source, mc, feeds, samples))
        except Exception as err:  # noqa: BLE001 - reported in the row
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    runners = {row.name: _unit(row.name, source, mc, feeds, samples)
               for row in case.rows if not row.error}
    if progress:
        progress(f"{name}: {len(runners)} rows, {repeat} timed units each")
    # One unit per row per round: the rows of a round run back to back, under the same load.
    times = measure_in_rounds(runners, repeat, warmup, repeat, settle=SETTLE_SECONDS)
    for row_name, seconds in times.items():
        row = case.row(row_name)
        row.median_ms = statistics.median(seconds) * 1e3
        row.min_ms = min(seconds) * 1e3
    baseline = times.get("python_loop")
    for row in case.rows:
        if baseline and row.name in times:
            row.speedup = _median_ratio(baseline, times[row.name])
    if "mc_batch" in times:
        if "one_big_call" in times:
            case.batch_vs_yardstick = _median_ratio(times["mc_batch"], times["one_big_call"])
        if "mc_loop" in times:
            case.batch_vs_loop = _median_ratio(times["mc_batch"], times["mc_loop"])
    return case


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator (units of one round ran back to back)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def run_mc_bench(samples: int = 32, repeat: int = 7, cnn_batches: tuple[int, ...] = (128,),
                 extra: list[tuple[str, str, onnx.ModelProto, dict[str, np.ndarray]]] = (),
                 runs: int = 1, progress: Callable[[str], None] | None = None) -> McBenchResult:
    """Every ``extra`` (name, description, model, feeds) case and the two CNN cases at
    each of ``cnn_batches``, ``runs`` times over."""
    result = McBenchResult(samples, repeat, ort.__version__, os.cpu_count() or 0, runs=runs)
    cases = list(extra)
    for late, where in ((False, "1"), (True, "2")):
        model = cnn_model(late=late)
        cases += [("cnn_late" if late else "cnn",
                   f"CNN, SpatialDropout2D after conv {where} of 2, {batch} images 3x16x16",
                   model, cnn_feeds(batch)) for batch in cnn_batches]
    start = time.perf_counter()
    for run in range(runs):
        result.loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
        for name, description, model, feeds in cases:
            if progress:
                progress(f"run {run + 1} of {runs}")
            case = run_case(name, description, model, feeds, samples, repeat, progress=progress)
            case.run = run
            result.cases.append(case)
    if progress:
        progress(f"done in {time.perf_counter() - start:.0f} s")
    return result


def format_table(result: McBenchResult) -> str:
    """Human-readable table of ``result``: every case, or with several runs their ranges."""
    lines = [f"Monte-Carlo dropout, N={result.samples} samples: one call of the MC model vs "
             f"N session.run calls (onnxruntime {result.onnxruntime}, {result.cpu_count} cores; "
             f"min and median of {result.repeat}; speed-up: median of per-round ratios)",
             _load_line(result)]
    width = max(len(label) for _, label in ROWS)
    if result.runs > 1:
        return "\n".join(lines + _ranges(result, width))
    for case in result.cases:
        lines.append(f"  {case.name}: {case.description}")
        for row in case.rows:
            if row.median_ms is None:
                lines.append(f"    {row.label:<{width}}  n/a ({row.error})")
                continue
            speed = "" if row.speedup is None else f"{row.speedup:6.2f}x"
            peak = "" if row.peak_mb is None else f"peak +{row.peak_mb:7.1f} MB"
            lines.append(f"    {row.label:<{width}}  min {row.min_ms:8.1f} ms  median "
                         f"{row.median_ms:8.1f} ms  {speed}  {peak}")
        lines.append(f"    auto builds {case.auto or 'nothing'}: {case.auto_reason}")
        lines.append("    goals: " + "; ".join(text for text, _ in _goals(case)))
    return "\n".join(lines)


def _load_line(result: McBenchResult) -> str:
    loads = ", ".join(f"{load:.2f}" for load in result.loads)
    verdict = "BUSY: other work ran, the figures are disturbed" if result.busy else "quiet"
    return (f"load average before each run: {loads} ({verdict}; the bench's own previous run "
            "counts in all but the first)")


def _span(values: list[float], form: str, suffix: str = "") -> str:
    """``values`` as one figure or a min-max range."""
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    text = format(low, form) if format(low, form) == format(high, form) else \
        f"{format(low, form)}-{format(high, form)}"
    return text + suffix


def _ranges(result: McBenchResult, width: int) -> list[str]:
    """Per case (name and batch), each row's speed-up and peak over the runs, and the goals."""
    groups: dict[tuple[str, int], list[McCase]] = {}
    for case in result.cases:
        groups.setdefault((case.name, case.batch), []).append(case)
    lines = [f"ranges over {result.runs} runs (min-max of each run's figure):"]
    for cases in groups.values():
        first = cases[0]
        lines.append(f"  {first.name}: {first.description}")
        for row_name, label in ROWS:
            rows = [c.row(row_name) for c in cases]
            if all(r.median_ms is None for r in rows):
                lines.append(f"    {label:<{width}}  n/a ({rows[0].error})")
                continue
            medians = [r.median_ms for r in rows if r.median_ms is not None]
            speeds = [r.speedup for r in rows if r.speedup is not None]
            peaks = [r.peak_mb for r in rows if r.peak_mb is not None]
            lines.append(f"    {label:<{width}}  median {_span(medians, '.1f', ' ms'):>17}  "
                         f"{_span(speeds, '.2f', 'x'):>12}  peak +{_span(peaks, '.0f', ' MB')}")
        lines.append(f"    auto builds {first.auto or 'nothing'}: {first.auto_reason}")
        verdicts = [_goals(case) for case in cases]
        for index, (text, _) in enumerate(verdicts[0]):
            met = sum(1 for goal in verdicts if goal[index][1])
            name = text.split(":")[0]
            lines.append(f"    goal {name}: met in {met} of {len(cases)} runs")
        yardstick = [c.batch_vs_yardstick for c in cases if c.batch_vs_yardstick]
        loop = [c.batch_vs_loop for c in cases if c.batch_vs_loop]
        lines.append(f"      batch / yardstick time {_span(yardstick, '.2f', 'x')}, "
                     f"batch / Loop time {_span(loop, '.2f', 'x')}")
    return lines


def _goals(case: McCase) -> list[tuple[str, bool]]:
    """The issue's goals for this case: (text, met)."""
    goals = []
    ratio = case.batch_vs_yardstick
    if ratio is None:
        goals.append(("batch folding within 1.05x of the yardstick's time: n/a", False))
    else:
        goals.append((f"batch folding within {BATCH_VS_YARDSTICK:g}x of the yardstick's time: "
                      f"{ratio:.2f}x, {'met' if ratio <= BATCH_VS_YARDSTICK else 'NOT met'}",
                      ratio <= BATCH_VS_YARDSTICK))
    loop = case.row("mc_loop").speedup
    if loop is None:
        goals.append(("Loop no slower than the N calls: n/a", False))
    else:
        goals.append((f"Loop no slower than the N calls: {loop:.2f}x, "
                      f"{'met' if loop >= LOOP_SPEEDUP else 'NOT met'}", loop >= LOOP_SPEEDUP))
    faster, built = case.faster, case.auto
    if faster is None or built is None:
        goals.append(("auto builds the faster strategy at this batch: n/a", False))
    else:
        right = faster in ("tie", built)
        here = "a tie" if faster == "tie" else f"{faster} is faster"
        goals.append((f"auto builds the faster strategy at this batch: {built}, {here} "
                      f"(batch / Loop time {case.batch_vs_loop:.2f}), "
                      f"{'met' if right else 'NOT met'}", right))
    return goals
