"""Converted Keras RNN models leave onnxruntime: OpenVINO and onnx.reference agree with it.

tf2onnx writes a Keras 3 GRU/LSTM as a ``Loop`` whose body passes the weights
and dropout masks through unchanged and emits the state as a rank-2 scan output;
OpenVINO (reading the file) refused the first and onnx.reference mis-stacked the
second. ``convert`` now writes the portable form (``passes.portable_loops``).

Models, converted once per module: the seed model (training and ``--strip``, and
its MC models, both strategies) and a small RNN zoo — a GRU with dropout and
recurrent dropout returning sequences, a stacked LSTM (sequences, then the last
state), bidirectional GRU and LSTM, a plain LSTM. Inference must equal
onnxruntime (and Keras); training mode is compared statistically: the mean and
spread of many runs per runtime against onnxruntime's, and runs must differ.
OpenVINO reads every model from a file, after ``inline`` (it runs no
SpatialDropout function).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from dropout_checks import assert_same_distribution
from keras_cli_runner import run_cli
from keras_models import SEED_MODEL
from runtimes import OPENVINO_CONFIG, load_tract, openvino_core, runner

import spatialdrop_onnx as sd
from spatialdrop_onnx.graph import iter_nodes
from spatialdrop_onnx.passes.loop_layout import loop_layout
from spatialdrop_onnx.passes.loop_scan_outputs import MARK

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
#: The zoo's runtimes. tract runs no ReverseSequence (bidirectional layers), so the zoo
#: stays out of it; the seed model runs there after ``inline --unroll-loops``.
RUNTIMES = ("reference", "openvino")
SEED_RUNTIMES = (*RUNTIMES, "tract")
TOLERANCE = 1e-5
RANDOM_RUNTIMES = ("reference", "openvino")


def _openvino_from_file(model: onnx.ModelProto, path: Path) -> Run:
    """``inline`` → file → ``openvino.Core().read_model(path)`` on the CPU plugin, float32."""
    onnx.save(sd.inline(model).model, path)
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", OPENVINO_CONFIG)
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = request.infer(feeds)
        return [np.array(results[output]) for output in compiled.outputs]

    return run


def _tract(model: onnx.ModelProto) -> Run:
    """``inline --unroll-loops`` → tract (it runs no Loop), at the batch of the first call:
    tf2onnx computes shapes from the batch through int32 casts tract does not follow for a
    symbolic one ("shape input is variable"); the other axes are the model's own.

    Each call runs on a fresh state (``runnable.run``): tract 0.23 carries a fused ``GRU``'s
    hidden state from one run of a reused state into the next (the second run differed by
    up to 1.0; docs/runtimes.md)."""
    written = sd.inline(model, unroll_loops=True)
    assert written.report.loops_left == (), written.report.loops_left
    first = model.graph.input[0]
    tensor = first.type.tensor_type
    element = {onnx.TensorProto.INT32: "i32", onnx.TensorProto.FLOAT: "f32"}[tensor.elem_type]
    names = [i.name for i in written.model.graph.input]
    loaded: list[Any] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not loaded:
            dims = [feeds[first.name].shape[0], *(d.dim_value for d in tensor.shape.dim[1:])]
            fact = ",".join([*(str(d) for d in dims), element])
            loaded.append(load_tract(written.model, {0: fact}))
        results = loaded[0].run([np.asarray(feeds[n]) for n in names])
        return [t.to_numpy() for t in results]

    return run


def _run_in(kind: str, model: onnx.ModelProto, workdir: Path, name: str) -> Run:
    if kind == "tract":
        return _tract(model)
    if kind == "openvino":
        return _openvino_from_file(model, workdir / f"{name}.openvino.onnx")
    if kind == "ort":
        session = sd.inference_session(model)
        return lambda feeds: session.run(None, feeds)
    return runner(kind, model)


def _convert(source: Path, out: Path, *extra: str) -> onnx.ModelProto:
    result = run_cli("convert", source, "-o", out, "--json", *extra)
    assert result.code == 0, result.stderr
    return onnx.load(out)


# --- Module fixtures: one conversion per model ---------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras_rnn_runtimes")


@pytest.fixture(scope="module")
def seed(keras: Any, workdir: Path) -> dict[str, Any]:
    training = _convert(SEED_MODEL, workdir / "seed.onnx")
    stripped = _convert(SEED_MODEL, workdir / "seed_stripped.onnx", "--strip")
    tokens = np.random.default_rng(5).integers(0, 10, size=(24, 6)).astype(np.int32)
    expected = keras.saving.load_model(SEED_MODEL, compile=False).predict(tokens, verbose=0)
    return {"training": training, "stripped": stripped, "path": workdir / "seed.onnx",
            "tokens": tokens, "expected": expected}


#: Zoo outputs whose layers have dropout (random in training mode); ``plain_lstm`` has none.
ZOO_RANDOM = ("gru_seq", "lstm_top", "bi_gru", "bi_lstm")
ZOO_SHAPE = (5, 4)
#: One Loop per RNN direction: gru_seq, two stacked LSTMs, 2 + 2 bidirectional, plain LSTM.
ZOO_RNN_DIRECTIONS = 8


def rnn_zoo(keras: Any) -> Any:
    """Stacked, bidirectional, GRU and LSTM, dropout/recurrent dropout, sequences or not."""
    layers = keras.layers
    seq = keras.Input(ZOO_SHAPE, name="seq")
    bottom = layers.LSTM(5, dropout=0.25, recurrent_dropout=0.25, return_sequences=True,
                         name="lstm_bottom")(seq)
    outputs = {
        "gru_seq": layers.GRU(6, dropout=0.3, recurrent_dropout=0.2, return_sequences=True,
                              name="gru_seq")(seq),
        "lstm_top": layers.LSTM(4, recurrent_dropout=0.3, name="lstm_top")(bottom),
        "bi_gru": layers.Bidirectional(layers.GRU(3, dropout=0.2, return_sequences=True),
                                       name="bi_gru")(seq),
        "bi_lstm": layers.Bidirectional(layers.LSTM(3, recurrent_dropout=0.2),
                                        name="bi_lstm")(seq),
        "plain_lstm": layers.LSTM(4, name="plain_lstm")(seq),
    }
    return keras.Model(seq, outputs, name="rnn_zoo")


@pytest.fixture(scope="module")
def zoo(keras: Any, workdir: Path) -> dict[str, Any]:
    keras.utils.set_random_seed(3)
    model = rnn_zoo(keras)
    source = workdir / "rnn_zoo.keras"
    model.save(source)
    converted = _convert(source, workdir / "rnn_zoo.onnx")
    seq = np.random.default_rng(9).standard_normal((16, *ZOO_SHAPE)).astype(np.float32)
    predicted = model.predict(seq, verbose=0)
    names = [o.name for o in converted.graph.output]
    return {"model": converted, "seq": seq, "names": names,
            "expected": [np.asarray(predicted[name]) for name in names]}


# --- Statistics ----------------------------------------------------------------------------


def _runs(run: Run, feeds: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
    """``count`` runs stacked per output: a list of [count, ...] arrays."""
    outputs = [run(feeds) for _ in range(count)]
    return [np.stack([o[k] for o in outputs]) for k in range(len(outputs[0]))]


# --- The seed model -------------------------------------------------------------------------


def test_seed_loops_are_in_the_portable_form(seed: dict[str, Any]) -> None:
    """Every Loop body makes each of its outputs and passes no state through, and the GRU
    state leaves as marked [1, batch, units] slices."""
    for model in (seed["training"], seed["stripped"]):
        loops = [(scope, node) for scope, node in iter_nodes(model) if node.op_type == "Loop"]
        fused = [node for _, node in iter_nodes(model) if node.op_type == "GRU"]
        assert len(loops) + len(fused) == 2  # encoder and decoder GRU (test_keras_rnn_fused)
        assert len(loops) == (0 if model is seed["stripped"] else 1)  # recurrent dropout
        for scope, node in loops:
            layout = loop_layout(node, scope)
            assert layout is not None
            body = layout.body
            made = {o for n in body.node for o in n.output}
            assert all(o.name in made for o in body.output)
            scans = list(body.output)[layout.body_out + layout.states:]
            assert scans and all(s.doc_string == MARK for s in scans)


@pytest.mark.parametrize("kind", SEED_RUNTIMES)
def test_seed_inference_agrees_with_onnxruntime_and_keras(seed: dict[str, Any], kind: str,
                                                          workdir: Path) -> None:
    feeds = {"tokens": seed["tokens"]}
    stripped = _run_in(kind, seed["stripped"], workdir, f"seed_stripped_{kind}")(feeds)[0]
    ours = _run_in("ort", seed["stripped"], workdir, "seed_stripped_ort")(feeds)[0]
    assert stripped.shape == seed["expected"].shape
    np.testing.assert_allclose(stripped, ours, atol=TOLERANCE)
    np.testing.assert_allclose(stripped, seed["expected"], atol=TOLERANCE)
    switched_off = _run_in(kind, seed["training"], workdir, f"seed_{kind}")(
        {**feeds, "training_mode": np.array(False)})[0]
    np.testing.assert_allclose(switched_off, seed["expected"], atol=TOLERANCE)


@pytest.mark.parametrize("kind", SEED_RUNTIMES)
def test_seed_training_mode_matches_onnxruntime_statistically(seed: dict[str, Any], kind: str,
                                                              workdir: Path) -> None:
    feeds = {"tokens": seed["tokens"], "training_mode": np.array(True)}
    runs = 48
    got = _runs(_run_in(kind, seed["training"], workdir, f"seed_{kind}"), feeds, runs)[0]
    ours = _runs(_run_in("ort", seed["training"], workdir, "seed_ort"), feeds, runs)[0]
    assert not np.array_equal(got[0], got[1])  # masks change from run to run
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)  # still a softmax per token
    assert np.abs(got - seed["expected"]).max() > 1e-3  # the dropout is on
    assert_same_distribution(got, ours, f"seed in {kind}")


@pytest.mark.parametrize(("kind", "strategy"), [
    (kind, strategy) for kind in SEED_RUNTIMES for strategy in ("batch", "loop")
    if (kind, strategy) != ("tract", "loop")])  # that Loop's trip count is N / k: next test
def test_seed_monte_carlo_model_matches_onnxruntime(seed: dict[str, Any], kind: str,
                                                    strategy: str, workdir: Path) -> None:
    """``mc`` of the converted seed model: mean and deviation over N samples in one call,
    in each runtime, against onnxruntime's (each a mean of N: their difference over the
    standard error is N(0, 1))."""
    samples = 64
    mc, report = sd.monte_carlo(seed["path"], samples=samples, strategy=strategy)
    assert report.strategy == strategy
    feeds = {"tokens": seed["tokens"]}
    mean, std = _run_in(kind, mc, workdir, f"seed_mc_{strategy}_{kind}")(feeds)
    ref_mean, ref_std = _run_in("ort", mc, workdir, f"seed_mc_{strategy}_ort")(feeds)
    assert mean.shape == std.shape == seed["expected"].shape
    varying = (std > 1e-3) & (ref_std > 1e-3)
    assert varying.mean() > 0.3
    z = (mean - ref_mean)[varying] / np.sqrt((std**2 + ref_std**2)[varying] / samples)
    assert abs(float(np.mean(np.abs(z))) - math.sqrt(2 / math.pi)) < 0.2
    assert 0.8 < float(np.median(std[varying] / ref_std[varying])) < 1.25
    np.testing.assert_allclose(mean.sum(-1), 1.0, rtol=1e-4)


def test_seed_monte_carlo_loop_is_not_written_out(seed: dict[str, Any]) -> None:
    """The folding Loop's trip count is chosen at run time (N / k): ``--unroll-loops``
    leaves it, and the encoder's Loop inside it, each named with the reason."""
    mc = sd.monte_carlo(seed["path"], samples=8, strategy="loop").model
    report = sd.inline(mc, unroll_loops=True).report
    assert report.loops_unrolled == ()
    assert any(left.startswith("mc/loop: its trip count is not a constant")
               for left in report.loops_left), report.loops_left
    assert any("encoder_1/while_loop: inside a subgraph" in left
               for left in report.loops_left), report.loops_left


# --- The RNN zoo ------------------------------------------------------------------------------


def test_zoo_has_one_portable_loop_per_rnn_direction(zoo: dict[str, Any]) -> None:
    model = zoo["model"]
    onnx.checker.check_model(model, full_check=True)
    loops = [(s, n) for s, n in iter_nodes(model) if n.op_type == "Loop"]
    fused = [n for _, n in iter_nodes(model) if n.op_type in ("GRU", "LSTM")]
    assert len(loops) + len(fused) == ZOO_RNN_DIRECTIONS
    for scope, node in loops:
        layout = loop_layout(node, scope)
        assert layout is not None
        inputs = {i.name for i in layout.body.input}
        assert not any(o.name in inputs for o in layout.body.output)


@pytest.mark.parametrize("kind", ["ort", *RUNTIMES])
def test_zoo_inference_equals_keras(zoo: dict[str, Any], kind: str, workdir: Path) -> None:
    run = _run_in(kind, zoo["model"], workdir, f"zoo_{kind}")
    got = run({"seq": zoo["seq"], "training_mode": np.array(False)})
    for name, value, expected in zip(zoo["names"], got, zoo["expected"], strict=True):
        assert value.shape == expected.shape, name
        np.testing.assert_allclose(value, expected, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("kind", RANDOM_RUNTIMES)
def test_zoo_training_mode_matches_onnxruntime_statistically(zoo: dict[str, Any], kind: str,
                                                             workdir: Path) -> None:
    feeds = {"seq": zoo["seq"], "training_mode": np.array(True)}
    runs = 48
    got = _runs(_run_in(kind, zoo["model"], workdir, f"zoo_{kind}"), feeds, runs)
    ours = _runs(_run_in("ort", zoo["model"], workdir, "zoo_ort"), feeds, runs)
    for name, value, reference, expected in zip(zoo["names"], got, ours, zoo["expected"],
                                                strict=True):
        if name in ZOO_RANDOM:
            assert not np.array_equal(value[0], value[1]), name
            assert_same_distribution(value, reference, f"{name} in {kind}")
        else:  # no dropout in this layer: training mode changes nothing
            np.testing.assert_allclose(value, np.broadcast_to(expected, value.shape),
                                       atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("kind", ["ort", "reference", "openvino"])
def test_zoo_gate_masks_are_drawn_independently(zoo: dict[str, Any], kind: str,
                                                workdir: Path) -> None:
    """The GRU's three recurrent-dropout masks (one per gate, one ``ones_like`` tensor) differ
    from each other, as in Keras (distinct seeds per draw)."""
    model = onnx.ModelProto()
    model.CopyFrom(zoo["model"])
    masks = [n.output[0] for n in model.graph.node
             if n.op_type == sd.OP_TYPE and "gru_seq" in n.name]
    shapes: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.output[0] in masks:
            shapes.setdefault(node.input[0], []).append(node.output[0])
    twins = max(shapes.values(), key=len)
    assert len(twins) >= 3  # the gates' masks on one tensor
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None) for name in twins)
    drawn = _run_in(kind, model, workdir, f"zoo_masks_{kind}")(
        {"seq": zoo["seq"], "training_mode": np.array(True)})[len(zoo["names"]):]
    kept = [mask != 0 for mask in drawn]
    for first in range(len(kept)):
        for second in range(first + 1, len(kept)):
            assert not np.array_equal(kept[first], kept[second]), (first, second)
