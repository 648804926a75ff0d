"""Serving a Monte-Carlo model: one trip per request, in the ways a server loads a model.

* from a file, in an ``onnxruntime.InferenceSession`` whose options have the native kernel
  registered (``sd.session_options()`` makes new ones, ``sd.register_kernel(so)`` adds it
  to the server's own);
* from the ``inline``d file, in a plain session where no custom op library can be loaded,
  and in OpenVINO and tract (tract: batch folding only; it runs no Loop).

Every route must give the same statistics. With dropout off (ratio 0) that is exact: the
mean is the source's output and the deviation 0. With SpatialDropout(0.5) on x, each
sample of a channel is 2x or 0, so with k keeps of N the mean is x*2k/N and the
deviation x*2*sqrt(k/N*(1-k/N)) with the same integer k, and k is Binomial(N, 0.5).

Also here: ``auto``'s rule (the Loop that folds as many samples per iteration as fit
``FOLD_CACHE_BYTES`` at the run's batch size; docs/monte-carlo.md, "Choosing") and the goals
the benchmark prints (timings are never asserted).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mc_models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from optional import require
from passes_helpers import parse

import spatialdrop_onnx as sd
from spatialdrop_onnx.bench_mc import McCase, McRow, _goals
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.errors import UsageError
from spatialdrop_onnx.passes.monte_carlo import FOLD_CACHE_BYTES

N = 40
STRATEGIES = ["batch", "loop"]
HEADER = '<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>'


def _dropout_model(ratio: float, channels: int = 32, size: int = 3, dims: str = "") -> str:
    """x[B, C, size, size] -> Relu -> SpatialDropout(ratio) -> y (and its Relu'd mean z)."""
    shape = dims or f"B,{channels},{size},{size}"
    return f"""{HEADER}
    g (float[{shape}] x, bool training_mode) => (float[{shape}] y)
      <float r = {{{ratio}}}, bool training_mode = {{0}}> {{
        a = Relu(x)
        y = org.spatialdrop.SpatialDropout(a, r, training_mode)
    }}"""


def _cnn() -> onnx.ModelProto:
    return mc_models.cnn(ratio=0.0, seed=3)


def _positive(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(7).uniform(0.5, 2.0, shape).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Path]:
    """(model, strategy, form) -> the saved MC model; form "mc" (as built) or "inlined"."""
    folder = tmp_path_factory.mktemp("served")
    sources = {"dropout": parse(_dropout_model(0.5)), "cnn": _cnn()}
    paths = {}
    for name, source in sources.items():
        for strategy in STRATEGIES:
            mc, report = sd.monte_carlo(source, samples=N, strategy=strategy)
            assert report.strategy == strategy
            inlined = sd.inline(mc).model
            for form, model in (("mc", mc), ("inlined", inlined)):
                path = folder / f"{name}_{strategy}_{form}.onnx"
                onnx.save(model, path)
                paths[name, strategy, form] = path
    return paths


def _open(route: str, path: Path):  # noqa: ANN202 - feeds -> outputs
    """Load ``path`` the way route ``route`` serves it; a function feeds -> outputs."""
    if route == "ort_kernel":  # the server's own options, with the kernel added
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        assert sd.register_kernel(so) is so
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if route == "ort_new_options":
        session = ort.InferenceSession(str(path), sd.session_options(),
                                       providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if route == "ort_plain":  # no library loaded: the model must be standard ONNX
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if route == "openvino":
        core = require("openvino").Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda feeds: [np.array(v) for v in request.infer(feeds).values()]
    if route == "tract":
        state = require("tract").onnx().load(str(path)).into_model().into_runnable() \
            .spawn_state()
        return lambda feeds: [t.to_numpy() for t in state.run(list(feeds.values()))]
    raise ValueError(route)


#: (route, form of the file it loads, strategies it runs).
ROUTES = [("ort_kernel", "mc", STRATEGIES), ("ort_new_options", "mc", STRATEGIES),
          ("ort_plain", "mc", STRATEGIES),  # the attached function bodies run
          ("ort_plain", "inlined", STRATEGIES), ("openvino", "inlined", STRATEGIES),
          ("tract", "inlined", ["batch"])]
CASES = [(route, form, strategy) for route, form, strategies in ROUTES
         for strategy in strategies]


def _ids(case: tuple[str, str, str]) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


def test_inlined_file_is_standard_onnx(files):
    """What a runtime without the custom op loads: no op of our domain in any scope, no
    function, and onnx's checker passes."""
    for (_, _, form), path in files.items():
        if form != "inlined":
            continue
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert not model.functions
        domains = {n.domain for n in _all_nodes(model.graph)}
        assert sd.DOMAIN not in domains, path.name
        assert sd.DOMAIN not in {o.domain for o in model.opset_import}


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes += _all_nodes(attr.g)
    return nodes


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_dropout_off_gives_the_source_output_and_no_deviation(case, files):
    """Ratio 0: every route gives exactly the statistics of N equal passes."""
    route, form, strategy = case
    x = np.random.default_rng(1).normal(size=(3, 3, 6, 6)).astype(np.float32)
    expected = sd.inference_session(_cnn()).run(None, {"x": x})[0]
    mean, std = _open(route, files["cnn", strategy, form])({"x": x})
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)
    if route.startswith("ort"):  # the statistics are computed in double: N equal passes
        np.testing.assert_array_equal(std, np.zeros_like(expected))
    else:  # OpenVINO runs double arithmetic in float: a few ulp of the mean (~0.2) remain
        assert float(np.abs(std).max()) <= 1e-6


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_route_samples_the_same_statistics(case, files):
    """SpatialDropout(0.5): mean and deviation from the same N samples, k ~ Binomial(N, 1/2),
    and a second request draws again (one trip per request, fresh samples)."""
    route, form, strategy = case
    x = _positive((4, 32, 3, 3))
    run = _open(route, files["dropout", strategy, form])
    first = _keeps(x, *run({"x": x}))
    second = _keeps(x, *run({"x": x}))
    both = np.concatenate([first, second])
    sd_ = math.sqrt(0.25 / (N * both.size))
    assert abs(both.mean() / N - 0.5) <= 4 * sd_, (route, both.mean() / N)
    assert ((both > 0) & (both < N)).mean() > 0.9, "samples share their masks"
    assert (first != second).any(), "two requests drew the same masks"


def _keeps(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per (row, channel) keep counts k, asserting mean = x*2k/N and std = x*2*sqrt(p(1-p))."""
    ratio = (mean / x).astype(np.float64)
    k = np.rint(ratio * N / 2)
    np.testing.assert_allclose(ratio, 2 * k / N, atol=1e-5)
    per_channel = k[..., :1, :1]
    assert (k == per_channel).all(), "a channel's positions saw different decisions"
    p = per_channel / N
    np.testing.assert_allclose(std / x, np.broadcast_to(2 * np.sqrt(p * (1 - p)), x.shape),
                               rtol=1e-5, atol=1e-6)
    return per_channel.ravel()


def test_session_options_are_new_and_register_kernel_changes_yours():
    """``session_options()`` never hands out the same object twice (a server's sessions do
    not share options by accident); ``register_kernel`` registers once per object."""
    first, second = sd.session_options(), sd.session_options()
    assert first is not second
    so = ort.SessionOptions()
    assert sd.register_kernel(so) is so
    assert sd.register_kernel(so) is so  # a second registration would fail session creation


# --- auto's rule: the Loop folds as many samples per iteration as fit the cache budget ---


@pytest.mark.parametrize(("channels", "size", "samples"), [(8, 4, 16), (32, 8, 32), (16, 16, 8)])
def test_auto_builds_the_loop_that_folds_what_fits(channels, size, samples):
    """One row of x is channels*size*size floats; all N samples fit one iteration up to
    budget // (N x row) rows."""
    model = parse(_dropout_model(0.5, channels, size))
    row = channels * size * size * 4
    report = sd.monte_carlo(model, samples=samples).report
    assert (report.strategy, report.foldable, report.chunked, report.row_bytes) == (
        "loop", True, True, row)
    assert report.fold_rows == FOLD_CACHE_BYTES // (samples * row) >= 1
    assert f"all {samples} in one iteration up to {report.fold_rows} rows" in report.reason
    assert report.to_dict()["fold_rows"] == report.fold_rows
    assert report.to_dict()["chunked"] is True


def _with_trip_count(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose extra last output is the MC Loop's trip count."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    loop = next(n for n in copy.graph.node if n.op_type == "Loop")
    copy.graph.output.append(onnx.helper.make_tensor_value_info(loop.input[0],
                                                                onnx.TensorProto.INT64, []))
    return copy


def _per_iteration(samples: int, batch: int, row: int) -> int:
    """The largest divisor d of N whose d x batch rows of ``row`` bytes fit the budget, or 1."""
    fitting = [d for d in range(1, samples + 1)
               if samples % d == 0 and d * batch * row <= FOLD_CACHE_BYTES]
    return max(fitting, default=1)


# 256 KB a row (64 channels of 32x32): 8 of 16 samples fit at batch 1, 4 at batch 2, 1 at 8
# and beyond; 8 KB a row (32 of 8x8): all 16 up to 16 rows.
@pytest.mark.parametrize(("channels", "size", "batch", "per_iteration"),
                         [(64, 32, 1, 8), (64, 32, 2, 4), (64, 32, 5, 1), (64, 32, 9, 1),
                          (32, 8, 1, 16), (32, 8, 16, 16), (32, 8, 17, 8), (32, 8, 300, 1)])
def test_loop_takes_as_many_samples_per_iteration_as_fit_the_batch(channels, size, batch,
                                                                   per_iteration, tmp_path):
    """The count is decided at run time from the batch: the trip count is N / k, and the
    statistics are those of the N samples whatever k (keep_samples against numpy)."""
    samples = 16
    row = channels * size * size * 4
    assert _per_iteration(samples, batch, row) == per_iteration  # the rule, worked by hand
    built = sd.monte_carlo(parse(_dropout_model(0.5, channels, size)), samples=samples,
                           keep_samples=True)
    assert built.report.chunked
    session = sd.inference_session(_with_trip_count(built.model))
    x = _positive((batch, channels, size, size))
    mean, std, kept, trips = session.run(None, {"x": x})
    assert trips == samples // per_iteration
    assert kept.shape == (samples, *x.shape)
    np.testing.assert_allclose(mean, kept.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, kept.std(axis=0, dtype=np.float64), rtol=1e-4, atol=1e-5)
    # Channel-wise samples, each its own: a channel is 0 or 2x in every sample...
    scaled = kept / x
    assert np.all(np.isclose(scaled, 0) | np.isclose(scaled, 2, rtol=1e-5))
    # ...and the N masks of a channel are not copies of one another's chunks.
    masks = scaled[..., 0, 0] > 1  # [N, B, C]
    assert len({m.tobytes() for m in masks}) == samples
    ones = masks.mean()
    assert abs(ones - 0.5) < 4.5 * math.sqrt(0.25 / masks.size)


def test_loop_takes_one_sample_per_iteration_where_folding_is_not_valid():
    """A fixed axis 0 is not a batch: no folding, the Loop runs N times."""
    built = sd.monte_carlo(parse(_dropout_model(0.5, dims="4,32,3,3")), samples=8)
    assert (built.report.strategy, built.report.chunked) == ("loop", False)
    session = sd.inference_session(_with_trip_count(built.model))
    assert session.run(None, {"x": _positive((4, 32, 3, 3))})[-1] == 8


def test_auto_folds_when_the_row_size_is_unknown():
    """Symbolic non-batch dims: no size to judge, folding (right for small batches) is kept
    and the reason says so."""
    report = sd.monte_carlo(parse(_dropout_model(0.5, dims="B,C,H,W")), samples=8).report
    assert (report.strategy, report.row_bytes, report.fold_rows) == ("batch", None, None)
    assert "size of a row is not known" in report.reason


# 16 KB a row (16 channels of 16x16), 8 samples: all fit 2 MB up to 16 rows.
@pytest.mark.parametrize(("told", "built"), [(1, "batch"), (16, "batch"), (17, "loop"),
                                             (500, "loop")])
def test_auto_told_the_batch_folds_without_a_loop_where_all_samples_fit(told, built):
    """Told the serving batch B, auto builds plain folding where N x B rows fit the budget
    (no Loop: none of its fixed cost), the folding Loop beyond; either model takes any batch
    and gives the statistics of its N samples (keep_samples against numpy)."""
    samples, row = 8, 16 * 16 * 16 * 4
    assert (samples * told * row <= FOLD_CACHE_BYTES) == (built == "batch")  # worked by hand
    result = sd.monte_carlo(parse(_dropout_model(0.5, 16, 16)), samples=samples,
                            batch_size=told, keep_samples=True)
    report = result.report
    assert (report.strategy, report.batch_size, report.chunked) == (built, told, built == "loop")
    assert report.to_dict()["batch_size"] == told
    assert ("Loop" in {n.op_type for n in result.model.graph.node}) == (built == "loop")
    assert f"at the batch size it is told ({told})" in report.reason
    session = sd.inference_session(result.model)
    x = _positive((3, 16, 16, 16))  # not the batch it was told
    mean, std, kept = session.run(None, {"x": x})
    assert kept.shape == (samples, *x.shape)
    np.testing.assert_allclose(mean, kept.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, kept.std(axis=0, dtype=np.float64), rtol=1e-4, atol=1e-5)
    scaled = kept / x
    assert np.all(np.isclose(scaled, 0) | np.isclose(scaled, 2, rtol=1e-5))
    assert len({m.tobytes() for m in scaled[..., 0, 0] > 1}) > 1  # samples differ


def test_a_told_batch_does_not_make_folding_valid():
    """Where folding is not valid, or a row's size unknown, the batch size changes nothing."""
    fixed = sd.monte_carlo(parse(_dropout_model(0.5, dims="4,32,3,3")), samples=8,
                           batch_size=4).report
    assert (fixed.strategy, fixed.chunked) == ("loop", False)
    symbolic = sd.monte_carlo(parse(_dropout_model(0.5, dims="B,C,H,W")), samples=8,
                              batch_size=10_000).report
    assert symbolic.strategy == "batch" and "size of a row is not known" in symbolic.reason


@pytest.mark.parametrize(("batch_size", "strategy", "message"), [
    (0, "auto", "positive integer"), (-3, "auto", "positive integer"),
    (True, "auto", "positive integer"), (2.0, "auto", "positive integer"),
    ("2", "auto", "positive integer"), (2, "loop", "auto strategy"),
    (2, "batch", "auto strategy")])
def test_a_bad_batch_size_is_a_usage_error(batch_size, strategy, message):
    with pytest.raises(UsageError, match=message):
        sd.monte_carlo(parse(_dropout_model(0.5)), samples=4, strategy=strategy,
                       batch_size=batch_size)


def test_cli_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture):
    src, out = tmp_path / "m.onnx", tmp_path / "mc.onnx"
    onnx.save(parse(_dropout_model(0.5, 16, 16)), src)
    assert main(["mc", str(src), "-o", str(out), "-n", "8", "--batch-size", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["strategy"], report["batch_size"]) == ("batch", 2)
    assert "Loop" not in {n.op_type for n in onnx.load(out).graph.node}
    out.unlink()
    for bad in (["--batch-size", "0"], ["--batch-size", "2", "--strategy", "loop"]):
        assert main(["mc", str(src), "-o", str(out), "-n", "8", *bad]) == 2
        assert not out.exists()


def test_auto_reason_when_folding_is_not_valid():
    report = sd.monte_carlo(parse(_dropout_model(0.5, dims="4,32,3,3")), samples=8).report
    assert (report.strategy, report.foldable, report.row_bytes) == ("loop", False, None)
    assert report.reason.startswith("batch folding is not valid: ")


# --- the benchmark's goals (its logic; no timing is asserted) ------------------------------


def _case(auto: str, batch_vs_loop: float, batch_vs_yardstick: float,
          loop_speedup: float, batch: int = 1, fold_rows: int | None = 4) -> McCase:
    case = McCase("m", "a model", batch, [McRow("mc_loop", "Loop", speedup=loop_speedup)],
                  auto=auto, auto_reason="why", fold_rows=fold_rows)
    case.batch_vs_loop, case.batch_vs_yardstick = batch_vs_loop, batch_vs_yardstick
    return case


@pytest.mark.parametrize(("auto", "batch_vs_loop", "right"), [
    ("batch", 0.5, True), ("batch", 1.5, False), ("loop", 1.5, True), ("loop", 0.5, False),
    ("loop", 1.03, True), ("batch", 0.97, True)])  # within 5 %: a tie, either is right
def test_bench_goal_auto_builds_the_faster_strategy(auto, batch_vs_loop, right):
    goals = _goals(_case(auto, batch_vs_loop, 1.0, 1.0))
    assert goals[2][1] is right, goals[2][0]


def test_bench_goals_against_the_yardstick_and_the_n_calls():
    met = [ok for _, ok in _goals(_case("batch", 0.5, 1.05, 1.0))]
    assert met[:2] == [True, True]
    met = [ok for _, ok in _goals(_case("batch", 0.5, 1.06, 0.99))]
    assert met[:2] == [False, False]


def test_bench_mc_prints_auto_goals_and_ranges(capsys: pytest.CaptureFixture):
    """Two runs at two batch sizes (tiny: a smoke test): ranges per case, auto's choice and
    reason, the goals met per run, the load before each run, peak memory per strategy."""
    assert main(["bench", "--mc", "--samples", "2", "--images", "1,2", "--repeat", "1",
                 "--runs", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == 2 and len(result["loads"]) == 2
    assert [(c["name"], c["batch"], c["run"]) for c in result["cases"]] == [
        (name, batch, run) for run in (0, 1) for name in ("cnn", "cnn_late")
        for batch in (1, 2)]
    for case in result["cases"]:  # told 1 or 2 images, 2 samples of the small CNNs fit
        assert case["auto"] == "batch", case["auto_reason"]
        assert f"told ({case['batch']})" in case["auto_reason"]
        assert case["fold_rows"] >= 2
        assert case["batch_vs_loop"] > 0 and case["batch_vs_yardstick"] > 0
        assert all(r["peak_mb"] is not None for r in case["rows"])
    assert main(["bench", "--mc", "--samples", "2", "--images", "1", "--repeat", "1",
                 "--runs", "2"]) == 0
    text = capsys.readouterr().out
    assert "ranges over 2 runs" in text and "load average before each run" in text
    assert "goal auto builds the faster strategy at this batch: met in" in text
    assert main(["bench", "--mc", "--images", "0"]) == 2


def test_bench_script_help_prints_help_and_runs_nothing():
    """``scripts/bench_mc.py --help`` once ran the whole benchmark."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_mc.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Options of bench" in done.stdout and "--runs" in done.stdout
    assert "Monte-Carlo dropout, N=" not in done.stdout  # no table: nothing was measured
