"""``monte_carlo``: the mean and deviation of N dropout passes, computed inside one model.

The checks are written from the definition. For one SpatialDropout(0.5) on x,
each sample of a channel is 2x or 0, so over N samples with k keeps the mean is
x*2k/N and the population deviation x*2*sqrt(k/N*(1-k/N)) with the *same*
integer k: mean and deviation must come from the same N samples, the deviation
must be the population one, and k must be Binomial(N, 0.5) over the channels.
Both strategies run in every runtime of the README table; the statistics agree
with N separate runs of the source model; the refusals of batch folding are
cases where folding would be wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mc_models
import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from dropout_checks import sample_data
from onnx import TensorProto
from passes_helpers import parse
from runtimes import RUNTIMES, runner

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.errors import RefusedError, UsageError, UserError
from spatialdrop_onnx.passes.monte_carlo.batch import build_batch
from spatialdrop_onnx.passes.monte_carlo.source import prepare

N = 48
STRATEGIES = ["batch", "loop"]
HEADER = '<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>'
SWITCH = "bool training_mode"
SINGLE = f"""{HEADER}
    g (float[B,64,3,3] x, {SWITCH}) => (float[B,64,3,3] y)
      <float r = {{0.5}}, bool training_mode = {{0}}> {{
        y = org.spatialdrop.SpatialDropout(x, r, training_mode)
    }}"""
SEEDED = SINGLE.replace("SpatialDropout(", "SpatialDropout<seed = 11>(")
#: Element-wise ONNX Dropout (as rewrite writes it) and a non-float output.
ELEMENTWISE = f"""{HEADER}
    g (float[B,40] x, {SWITCH}) => (float[B,40] y, int64[B] best)
      <float r = {{0.5}}, bool training_mode = {{0}}> {{
        a = Relu(x)
        y = Dropout(a, r, training_mode)
        best = ArgMax<axis = 1, keepdims = 0>(y)
    }}"""
#: conv -> channel dropout -> relu -> conv -> spatial mean -> softmax: the statistics of a
#: non-linear function of the masks.
def _cnn() -> onnx.ModelProto:
    return mc_models.cnn(ratio=0.3, seed=5)


@pytest.fixture(scope="module")
def sources() -> dict[str, onnx.ModelProto]:
    return {"single": parse(SINGLE), "seeded": parse(SEEDED),
            "elementwise": parse(ELEMENTWISE), "cnn": _cnn()}


@pytest.fixture(scope="module")
def built(sources) -> dict[tuple[str, str], sd.PassResult]:
    """Each source's Monte-Carlo model per strategy, built once."""
    return {(name, strategy): sd.monte_carlo(model, samples=N, strategy=strategy)
            for name, model in sources.items() for strategy in STRATEGIES}


def _keeps(x: np.ndarray, mean: np.ndarray, std: np.ndarray, samples: int) -> np.ndarray:
    """Per (row, channel) keep counts k, asserting mean = x*2k/N and std = x*2*sqrt(p(1-p))."""
    ratio = (mean / x).astype(np.float64)
    k = np.rint(ratio * samples / 2)
    np.testing.assert_allclose(ratio, 2 * k / samples, atol=1e-5)
    per_channel = k[..., :1, :1]
    assert (k == per_channel).all(), "a channel's spatial positions saw different decisions"
    p = per_channel / samples
    np.testing.assert_allclose(std / x, np.broadcast_to(2 * np.sqrt(p * (1 - p)), x.shape),
                               rtol=1e-5, atol=1e-6)
    return per_channel.ravel()


def _assert_binomial(k: np.ndarray, samples: int, p: float = 0.5, sigmas: float = 4.0) -> None:
    """k/N averaged over channels within ``sigmas`` sd of p; some channels drawn both ways."""
    sd_ = math.sqrt(p * (1 - p) / (samples * k.size))
    assert abs(k.mean() / samples - p) <= sigmas * sd_, (k.mean() / samples, sigmas * sd_)
    assert ((k > 0) & (k < samples)).mean() > 0.9, "samples share their masks"


@pytest.mark.parametrize("kind", RUNTIMES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_dropout_mean_and_std_come_from_n_samples(strategy, kind, built):
    """The README table's 'MC model' column: one call per runtime, mean -> x, std -> x."""
    model, report = built["single", strategy]
    assert report.strategy == strategy
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    mean, std = runner(kind, model)({"x": x})
    k = _keeps(x, mean, std, N)
    _assert_binomial(k, N)
    # Averaged over the 256 channels, the mean is x and the deviation x (E[2 sqrt(p(1-p))]
    # is 1 - O(1/N), and 0.03 is more than 4 sd of the channel average).
    assert abs(float(np.mean(mean / x)) - 1) < 0.1
    assert abs(float(np.mean(std / x)) - 1) < 0.06


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_agrees_with_n_separate_runs(strategy, sources, built):
    """Against N session.run calls of the source model with training on (native kernel)."""
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    source = sd.inference_session(sources["single"])
    runs = np.stack([source.run(None, {"x": x, "training_mode": np.array(True)})[0]
                     for _ in range(N)])
    k_runs = _keeps(x, runs.mean(0), runs.std(0), N)
    mean, std = sd.inference_session(built["single", strategy].model).run(None, {"x": x})
    k_mc = _keeps(x, mean, std, N)
    # Two Binomial(N, 0.5) samples of 256 channels: their means within 4 sd of each other.
    assert abs(k_mc.mean() - k_runs.mean()) <= 4 * math.sqrt(2 * N * 0.25 / k_mc.size)

    # 256 images: mean |z| is 0.83 +- 0.03 over repeated draws (0.83 +- 0.06 at 64 images,
    # which failed the bound about once in 30 runs).
    x = sample_data((256, 3, 6, 6), np.dtype(np.float32), seed=3)
    source = sd.inference_session(sources["cnn"])
    runs = np.stack([source.run(None, {"x": x, "training_mode": np.array(True)})[0]
                     for _ in range(N)])
    mean, std = sd.inference_session(built["cnn", strategy].model).run(None, {"x": x})
    ref_mean, ref_std = runs.mean(0), runs.std(0)
    z = (mean - ref_mean) / np.sqrt((std**2 + ref_std**2) / N)
    assert abs(float(np.mean(np.abs(z))) - math.sqrt(2 / math.pi)) < 0.15  # |N(0,1)|: 0.80
    assert 0.9 < float(np.median(std / ref_std)) < 1.1
    np.testing.assert_allclose(mean.sum(-1), 1, rtol=1e-5)  # a mean of softmax rows


@pytest.mark.parametrize("native", [True, False], ids=["native", "function_body"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seeded_model_gives_the_same_mc_output_in_every_new_session(strategy, native, built):
    model = built["seeded", strategy].model
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    first, second = (sd.inference_session(model, native=native).run(None, {"x": x})
                     for _ in range(2))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    _assert_binomial(_keeps(x, *first, N), N)  # and the N samples inside still differ


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_elementwise_dropout_is_sampled_in_plain_onnxruntime(strategy, built):
    """rewrite writes element-wise sites as ONNX Dropout, which onnxruntime's EliminateDropout
    deletes whatever its training_mode (also in a Loop body): the MC model turns it into
    SpatialDropout(shared_axes=[]), so a default session samples it."""
    model, report = built["elementwise", strategy]
    assert report.dropout_converted == 1 and report.dropped_outputs == ("best",)
    assert [o.name for o in model.graph.output] == ["y_mean", "y_std"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = sample_data((50, 40), np.dtype(np.float32))
    mean, std = session.run(None, {"x": x})
    ratio = mean / x
    k = np.rint(ratio * N / 2)
    np.testing.assert_allclose(ratio, 2 * k / N, atol=1e-5)
    np.testing.assert_allclose(std / x, 2 * np.sqrt(k / N * (1 - k / N)), rtol=1e-5, atol=1e-6)
    _assert_binomial(k.ravel(), N)  # 2000 independent elements


def test_plain_onnxruntime_deletes_training_dropout_in_a_loop_body():
    """Why the MC model turns Dropout into SpatialDropout: EliminateDropout also removes an
    interior Dropout of a Loop body whatever its training_mode (if this changes, so can the
    docs)."""
    text = f"""{HEADER}
        g (float[1000] x) => (float[3,1000] s)
          <int64 n = {{3}}, bool go = {{1}}, float r = {{0.5}}, bool t = {{1}}> {{
            s = Loop(n, go) <body = b (int64 i, bool c) => (bool c_out, float[1000] u) {{
                a = Relu(x)
                d = Dropout(a, r, t)
                u = Relu(d)
                c_out = Identity(c)
            }}>
        }}"""
    model = parse(text)
    x = np.ones(1000, np.float32)
    kept = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert (kept.run(None, {"x": x})[0] == 1).all()
    trained = sd.inference_session(model).run(None, {"x": x})[0]
    assert abs(float((trained == 0).mean()) - 0.5) < 4 * math.sqrt(0.25 / 3000)


# --- Batch folding: when it is refused, and why it must be ------------------------------

REFUSED = {
    # DropPath in "batch" mode: one decision for the whole batch.
    "shared_axis_0": (SINGLE.replace("SpatialDropout(", "SpatialDropout<shared_axes = [0, 1]>("),
                      "along axis 0"),
    "fixed_batch": (SINGLE.replace("float[B,64,3,3] x", "float[4,64,3,3] x"),
                    "fixed size 4 at axis 0"),
    # DropConnect: the decisions are drawn on a weight, the same for every row.
    "weight_dropout": (f"""{HEADER}
        g (float[B,8] x, {SWITCH}) => (float[B,4] y)
          <float[8,4] w = {{{", ".join(["0.5"] * 32)}}}, float r = {{0.5}},
           bool training_mode = {{0}}> {{
            v = org.spatialdrop.SpatialDropout<shared_axes = [1]>(w, r, training_mode)
            y = MatMul(x, v)
        }}""", "not provably the batch"),
    "fixed_shape_draw": (f"""{HEADER}
        g (float[B,4] x, {SWITCH}) => (float[B,4] y) {{
            u = RandomUniform<shape = [1, 4]>()
            y = Add(x, u)
        }}""", "does not grow with the batch"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_batch_folding_refused_where_it_would_be_wrong(case):
    text, reason = REFUSED[case]
    source = parse(text)
    model, report = sd.monte_carlo(source, samples=4)
    assert (report.strategy, report.foldable) == ("loop", False)
    assert reason in report.reason
    assert any(n.op_type == "Loop" for n in model.graph.node)
    with pytest.raises(RefusedError, match=reason):
        sd.monte_carlo(source, samples=4, strategy="batch")


def test_folding_a_shared_axis_0_would_share_the_samples():
    """What the refusal prevents: folded, DropPath-batch samples are all the same draw."""
    source = parse(REFUSED["shared_axis_0"][0])
    folded = build_batch(prepare(source), N, False, {"x": 4, "y": 4})
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    _, std = sd.inference_session(sd.make_portable(folded)).run(None, {"x": x})
    assert (std == 0).all()
    looped = sd.monte_carlo(source, samples=N).model
    _, std = sd.inference_session(looped).run(None, {"x": x})
    assert (std > 0).mean() > 0.9


# --- The model's interface ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_interface(strategy, sources):
    source = sources["cnn"]
    model, report = sd.monte_carlo(source, samples=7, strategy=strategy, keep_samples=True)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0] == source.graph.input[0]
    assert "training_mode" not in {i.name for i in model.graph.initializer}
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in model.graph.output}
    assert shapes == {"p_mean": ["B", 5], "p_std": ["B", 5], "p_samples": [7, "B", 5]}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
    mean, std, samples = sd.inference_session(model).run(
        None, {"x": sample_data((3, 3, 6, 6), np.dtype(np.float32))})
    assert samples.shape == (7, 3, 5)
    np.testing.assert_allclose(samples.mean(0), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(samples.std(0), std, rtol=1e-4, atol=1e-6)
    assert report.to_dict()["outputs"] == [{"source": "p", "mean": "p_mean", "std": "p_std",
                                            "samples": "p_samples", "entropy": None,
                                            "expected_entropy": None,
                                            "mutual_information": None}]
    json.dumps(report.to_dict(), allow_nan=False)


def test_statistic_names_never_collide():
    """A value already called y_mean is renamed; an input with that name is refused."""
    text = f"""{HEADER}
        g (float[B,6] x, {SWITCH}) => (float[B,6] y, float[B,6] y_mean)
          <float r = {{0.5}}, bool training_mode = {{0}}> {{
            y = org.spatialdrop.SpatialDropout(x, r, training_mode)
            y_mean = Relu(y)
        }}"""
    model, _ = sd.monte_carlo(parse(text), samples=3)
    assert [o.name for o in model.graph.output] == ["y_mean", "y_std", "y_mean_mean",
                                                    "y_mean_std"]
    x = sample_data((5, 6), np.dtype(np.float32))
    mean, _, relu_mean, _ = sd.inference_session(model).run(None, {"x": x})
    np.testing.assert_allclose(mean, relu_mean)  # x > 0: Relu changes nothing
    clash = text.replace("float[B,6] x, bool", "float[B,6] x, float[B,6] y_std, bool")
    clash = clash.replace("y_mean = Relu(y)", "y_mean = Add(y, y_std)")
    with pytest.raises(UserError, match="input named y_std"):
        sd.monte_carlo(parse(clash), samples=3)


def test_bad_arguments_and_nothing_to_sample(sources):
    with pytest.raises(UsageError):
        sd.monte_carlo(sources["single"], samples=1)
    with pytest.raises(UsageError):
        sd.monte_carlo(sources["single"], samples=4, strategy="fold")
    stripped = sd.strip(sources["single"]).model
    with pytest.raises(UserError, match="no dropout site that trains.*export it with dropout "
                                        "kept"):
        sd.monte_carlo(stripped, samples=4)


def test_cli_mc(sources, tmp_path: Path, capsys: pytest.CaptureFixture):
    src, out = tmp_path / "single.onnx", tmp_path / "mc.onnx"
    onnx.save(sources["single"], src)
    assert main(["mc", str(src), "-o", str(out), "--samples", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["strategy"], report["requested"], report["samples"]) == ("loop", "auto", 5)
    assert report["chunked"] is True  # folding is valid: the Loop folds what fits
    assert [o.name for o in onnx.load(out).graph.output] == ["y_mean", "y_std"]
    assert main(["mc", str(src), "-o", str(out), "-n", "5", "--strategy", "loop",
                 "--keep-samples"]) == 0
    assert "strategy loop" in capsys.readouterr().err
    assert [o.name for o in onnx.load(out).graph.output] == ["y_mean", "y_std", "y_samples"]
    shared = tmp_path / "shared.onnx"
    onnx.save(parse(REFUSED["shared_axis_0"][0]), shared)
    assert main(["mc", str(shared), "-o", str(out), "-n", "5", "--strategy", "batch"]) == 4
    stripped = tmp_path / "stripped.onnx"
    onnx.save(sd.strip(sources["single"]).model, stripped)
    assert main(["mc", str(stripped), "-o", str(out), "-n", "5"]) == 3
    assert main(["mc", str(src), "-o", str(out), "-n", "1"]) == 2
    assert main(["mc", str(src), "-o", str(src), "-n", "5"]) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("spatialdrop-onnx: error:") for line in lines)


# --- The deterministic prefix runs once -------------------------------------------------

#: x -> Conv (identity weights) -> SpatialDropout -> Reshape to [B, -1], the target shape
#: computed from the prefix (so the fold must recompute it at N*B).
PREFIX = f"""{HEADER}
    g (float[B,8,4,4] x, {SWITCH}) => (float[B,128] y)
      <float r = {{0.5}}, bool training_mode = {{0}}, int64[1] zero = {{0}}, int64[1] one = {{1}},
       int64[1] rest = {{-1}}> {{
        c = Conv(x, w)
        s = Shape(c)
        b = Slice(s, zero, one)
        flat = Concat<axis = 0>(b, rest)
        d = org.spatialdrop.SpatialDropout(c, r, training_mode)
        y = Reshape(d, flat)
    }}"""
#: The same with the target shape made inside an If: a node with a body cannot be
#: recomputed on the folded side, so the whole model is folded.
PREFIX_IF = PREFIX.replace("flat = Concat<axis = 0>(b, rest)", """flat = If(training_mode) <
            then_branch = t () => (int64[2] ft) {{ ft = Concat<axis = 0>(b, rest) }},
            else_branch = e () => (int64[2] fe) {{ fe = Concat<axis = 0>(b, rest) }}>""")


def _prefix_model(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text.replace("{{", "{").replace("}}", "}"))
    eye = np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1)
    model.graph.initializer.append(onnx.numpy_helper.from_array(eye, "w"))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("text", [PREFIX, PREFIX_IF], ids=["shape_arithmetic", "if_in_prefix"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_prefix_runs_once(strategy, text):
    model, report = sd.monte_carlo(_prefix_model(text), samples=N, strategy=strategy)
    assert report.strategy == strategy
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if strategy == "loop" or text is PREFIX:
        assert len(convs) == 1 and convs[0].input[0] == "x", "the prefix runs at batch B, once"
    x = sample_data((4, 8, 4, 4), np.dtype(np.float32))
    mean, std = sd.inference_session(model).run(None, {"x": x})
    assert mean.shape == std.shape == (4, 128)
    k = _keeps(x, mean.reshape(x.shape), std.reshape(x.shape), N)
    _assert_binomial(k, N, sigmas=4.5)


def test_bench_mc_command_json(capsys: pytest.CaptureFixture):
    """``spatialdrop-onnx bench --mc`` runs every row (tiny sizes: a smoke test, not a timing)."""
    assert main(["bench", "--mc", "--samples", "2", "--images", "2", "--repeat", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in result["cases"]] == ["cnn", "cnn_late"]
    for case in result["cases"]:
        rows = {r["name"]: r for r in case["rows"]}
        assert set(rows) == {"python_loop", "mc_batch", "mc_loop", "one_big_call"}
        assert all(r["error"] is None and r["median_ms"] > 0 and r["peak_mb"] is not None
                   for r in rows.values())
        assert rows["python_loop"]["speedup"] == 1.0


def test_folding_trusts_shape_inference_only_where_it_agrees_with_the_model(monkeypatch):
    """onnxruntime 1.21's symbolic inference gave a rank-4 ConstantOfShape rank 7 and the
    folded model came out invalid. An inferred shape that contradicts a declared one makes
    ``auto`` take the Loop (valid output) and ``batch`` refuse, saying why."""
    from spatialdrop_onnx.graph import ValueType
    from spatialdrop_onnx.passes.monte_carlo import folding

    path = Path(__file__).resolve().parents[1] / "models" / "onnx" / "torch_droppath_dynamic.onnx"
    source = onnx.load(path)
    declared = {v.name: v for v in source.graph.value_info}
    assert len(declared["val_5"].type.tensor_type.shape.dim) == 4
    real = folding._infer

    def wrong_rank(model):  # noqa: ANN001, ANN202 - the patched function's own signature
        facts, problem = real(model)
        table = facts.scope_types(0)
        table["val_5"] = ValueType(table["val_5"].elem_type, (*table["val_5"].dims, 1, 1, 1))
        return facts, problem

    monkeypatch.setattr(folding, "_infer", wrong_rank)
    model, report = sd.monte_carlo(source, samples=2)
    assert report.strategy == "loop"
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(RefusedError, match="contradicts the model .*declared"):
        sd.monte_carlo(source, samples=2, strategy="batch")


@pytest.mark.parametrize(("late", "body_weights"), [(False, {"w2", "w3", "b3"}),
                                                     (True, {"w3", "b3"})])
def test_loop_body_holds_the_weights_only_it_reads(late, body_weights):
    """onnxruntime left the body's convolutions unoptimised while their weights came from
    the outer scope (bench --mc: the early-dropout CNN's Loop 1.0x the N calls, 1.5x with
    the weights in the body). Moved, not copied; an overridable initializer stays out."""
    from spatialdrop_onnx.bench_mc import cnn_feeds, cnn_model

    source = cnn_model(late=late)
    # The ratio made a graph input with a default: a caller may feed another one.
    source.graph.input.append(onnx.helper.make_tensor_value_info("ratio", TensorProto.FLOAT, []))
    model, report = sd.monte_carlo(source, samples=N, strategy="loop")
    assert report.strategy == "loop"
    onnx.checker.check_model(model, full_check=True)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    inside = {i.name for i in body.initializer}
    outside = {i.name for i in model.graph.initializer}
    assert body_weights <= inside and not inside & outside
    assert "w1" in outside and "ratio" in outside and "ratio" not in inside
    feeds = cnn_feeds(4)
    mean, std = sd.inference_session(model).run(None, feeds)
    assert mean.shape == std.shape == (4, 10) and np.all(std > 0)
    assert np.allclose(mean.sum(axis=1), 1, atol=1e-5)  # a mean of softmax outputs


# --- mc explains its choices ------------------------------------------------------------


def _with_noise_shaped_mask(read: bool) -> onnx.ModelProto:
    """SINGLE with the mask output declared in the noise shape [B, 64, 1, 1], as the torch
    helper's exports declare it; with ``read`` a float output also reads the mask."""
    text = SINGLE.replace("y = org.spatialdrop.SpatialDropout(x, r, training_mode)",
                          "y, m = org.spatialdrop.SpatialDropout(x, r, training_mode)")
    if read:
        text = text.replace("(float[B,64,3,3] y)", "(float[B,64,3,3] y, float[B,64,3,3] z)")
        text = text.replace("training_mode)\n", "training_mode)\n        k = Cast<to = 1>(m)\n"
                            "        z = Add(y, k)\n")
    model = onnx.parser.parse_model(text)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(
        "m", TensorProto.BOOL, ["B", 64, 1, 1]))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("read", [False, True], ids=["mask_unread", "mask_read"])
def test_mask_declared_in_the_noise_shape_does_not_stop_folding(read):
    """Folding's check stood SpatialDropout in as ONNX Dropout, whose mask is data-shaped:
    a mask declared [B, C, 1, 1] looked like a contradiction and mc took the one-sample Loop."""
    model, report = sd.monte_carlo(_with_noise_shaped_mask(read), samples=N)
    assert report.foldable and report.chunked, report.reason
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    outputs = sd.inference_session(model).run(None, {"x": x})
    k = _keeps(x, outputs[0], outputs[1], N)
    _assert_binomial(k, N)
    if read:  # z = y + keep: its mean is y's plus the channel's keep rate, from the same k
        expected = outputs[0] + (k / N).reshape(4, 64, 1, 1)
        np.testing.assert_allclose(outputs[2], expected, rtol=1e-5)


def test_unbatched_input_is_not_called_a_batch():
    """A [C, H, W] input has a fixed axis 0 that is not a batch size."""
    text = SINGLE.replace("float[B,64,3,3] x", "float[64,3,3] x").replace(
        "float[B,64,3,3] y", "float[64,3,3] y")
    _, report = sd.monte_carlo(parse(text), samples=4)
    assert report.strategy == "loop"
    assert "fixed size 64 at axis 0" in report.reason and "unbatched" in report.reason
    assert "batch size 64" not in report.reason


#: An op symbolic shape inference does not know, after the dropout.
UNKNOWN_OP = SINGLE.replace('"org.spatialdrop": 1]', '"org.spatialdrop": 1, "com.example": 1]'
                            ).replace("y = org.spatialdrop.SpatialDropout(x, r, training_mode)",
                                      "d = org.spatialdrop.SpatialDropout(x, r, training_mode)\n"
                                      "        y = com.example.Blur(d)")


def test_shape_inference_failures_are_explained(monkeypatch, tmp_path: Path):
    """No internal text ("Incomplete symbolic shape inference", "object of type 'NoneType'
    has no len()"): the reason names the node where the inference stopped. The working
    directory is left as it was (the tool saves a file into it when it gives up; the
    library ran it in-process and left the caller in "/")."""
    monkeypatch.chdir(tmp_path)
    _, report = sd.monte_carlo(onnx.parser.parse_model(UNKNOWN_OP), samples=4)
    assert Path.cwd() == tmp_path and not list(tmp_path.iterdir())
    assert report.strategy == "loop"
    assert "stops: it cannot follow the shapes through the Blur node that makes y" \
        in report.reason
    assert "Incomplete" not in report.reason

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def crash(self, node):  # noqa: ANN001, ANN202 - the replaced method's signature
        return len(None)  # what some of its handlers hit on unusual models

    monkeypatch.setattr(SymbolicShapeInference, "_infer_Reshape", crash)
    _, report = sd.monte_carlo(_prefix_model(PREFIX), samples=4)
    assert report.strategy == "loop"
    assert "it fails on Reshape node y" in report.reason
    assert "NoneType" not in report.reason
    assert Path.cwd() == tmp_path


def test_cli_summary_names_the_outputs_left_out(sources, tmp_path: Path,
                                                capsys: pytest.CaptureFixture):
    src, out = tmp_path / "elementwise.onnx", tmp_path / "mc.onnx"
    onnx.save(sources["elementwise"], src)
    assert main(["mc", str(src), "-o", str(out), "-n", "3"]) == 0
    summary = capsys.readouterr().err.strip()
    assert "\n" not in summary and summary.endswith("left out (not float): best")


NOTHING_TO_SAMPLE = {
    # Inference-form dropout: no training_mode, so it never trains.
    "inference_dropout": (f"""{HEADER}
        g (float[B,4] x) => (float[B,4] y) <float r = {{0.5}}> {{
            y = Dropout(x, r)
        }}""", "its 1 dropout node(s) never train"),
    # A contrib dropout mc does not know how to sample.
    "unrecognised": ("""<ir_version: 10, opset_import: ["": 18, "com.microsoft": 1]>
        g (float[B,4] x) => (float[B,4] y) <float[4] b = {0, 0, 0, 0}> {
            y = com.microsoft.BiasDropout(x, b)
        }""", "look random and are not recognised: com.microsoft.BiasDropout x1"),
    "plain": (f"""{HEADER}
        g (float[B,4] x) => (float[B,4] y) {{
            y = Relu(x)
        }}""", "no dropout site that trains and no random op (a stripped model"),
}


@pytest.mark.parametrize("case", sorted(NOTHING_TO_SAMPLE))
def test_nothing_to_sample_says_what_was_found(case, tmp_path: Path,
                                               capsys: pytest.CaptureFixture):
    text, found = NOTHING_TO_SAMPLE[case]
    model = onnx.parser.parse_model(text)
    with pytest.raises(UserError) as raised:
        sd.monte_carlo(model, samples=4)
    assert found in str(raised.value)
    assert "rewrite or convert the model first" not in str(raised.value)
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    assert main(["mc", str(src), "-o", str(tmp_path / "mc.onnx"), "-n", "4"]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and found in lines[0]
