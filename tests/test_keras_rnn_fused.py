"""Keras GRU/LSTM layers become the fused ONNX ``GRU``/``LSTM`` op where the layer allows it.

Models, converted once per module (training form and ``--strip``): the seed model and
an RNN zoo — GRU/LSTM with input dropout, with recurrent dropout (the loop stays in
the training form), stacked LSTMs, Bidirectional with ``concat`` (input dropout: one
op per direction) and ``sum`` merges, ``go_backwards`` with ``reset_after=False``,
``return_sequences`` both ways, and a linear activation the op has not (never fused).
Inference must equal Keras; training mode is compared statistically with Keras'
own training-mode calls; the fused seed model runs in tract, OpenVINO and onnx.reference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from dropout_checks import assert_same_distribution
from keras_models import SEED_MODEL
from optional import require
from runtimes import runner

from spatialdrop_onnx.converters.keras_convert import convert_keras
from spatialdrop_onnx.graph import iter_nodes

TOLERANCE = 1e-5
SHAPE = (5, 4)
#: Layer -> fused in the training form? (recurrent dropout and a linear activation: no)
TRAINING_FUSED = {"gru_d": True, "gru_rd": False, "lstm_bottom": True, "lstm_top": False,
                  "bi_gru": True, "bi_lstm": False, "bi_gru_sum": True, "gru_back": True,
                  "gru_linear": False}
#: Outputs random in training mode through a fused layer's input dropout.
FUSED_RANDOM = ("gru_d", "bi_gru", "lstm_top")


def rnn_zoo(keras: Any) -> Any:
    layers = keras.layers
    seq = keras.Input(SHAPE, name="seq")
    bottom = layers.LSTM(5, dropout=0.25, return_sequences=True, name="lstm_bottom")(seq)
    outputs = {
        "gru_d": layers.GRU(6, dropout=0.3, return_sequences=True, name="gru_d")(seq),
        "gru_rd": layers.GRU(5, dropout=0.2, recurrent_dropout=0.2, name="gru_rd")(seq),
        "lstm_top": layers.LSTM(4, recurrent_dropout=0.3, name="lstm_top")(bottom),
        "bi_gru": layers.Bidirectional(layers.GRU(3, dropout=0.2, return_sequences=True),
                                       name="bi_gru")(seq),
        "bi_lstm": layers.Bidirectional(layers.LSTM(3, recurrent_dropout=0.2),
                                        name="bi_lstm")(seq),
        "bi_gru_sum": layers.Bidirectional(layers.GRU(3, return_sequences=True),
                                           merge_mode="sum", name="bi_gru_sum")(seq),
        "gru_back": layers.GRU(4, go_backwards=True, reset_after=False, return_sequences=True,
                               name="gru_back")(seq),
        "gru_linear": layers.GRU(3, activation="linear", name="gru_linear")(seq),
    }
    return keras.Model(seq, outputs, name="rnn_fused_zoo")


def _converted(source: Path, out: Path, strip: bool) -> dict[str, Any]:
    report = convert_keras(source, out, strip=strip)
    notes = {note.split(" ", 1)[0]: note for note in report.notes
             if "fused into" in note or "kept as tf2onnx's Loop" in note}
    return {"model": onnx.load(out), "notes": notes, "report": report}


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, node in iter_nodes(model):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def zoo(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keras_rnn_fused")
    keras.utils.set_random_seed(11)
    model = rnn_zoo(keras)
    source = folder / "zoo.keras"
    model.save(source)
    seq = np.random.default_rng(2).standard_normal((16, *SHAPE)).astype(np.float32)
    training = _converted(source, folder / "zoo.onnx", strip=False)
    names = [o.name for o in training["model"].graph.output]
    predicted = model.predict(seq, verbose=0)
    return {"keras_model": model, "seq": seq, "names": names,
            "expected": [np.asarray(predicted[name]) for name in names],
            "training": training, "stripped": _converted(source, folder / "zoo_s.onnx", True)}


@pytest.fixture(scope="module")
def seed(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keras_rnn_fused_seed")
    tokens = np.random.default_rng(5).integers(0, 10, size=(24, 6)).astype(np.int32)
    expected = keras.saving.load_model(SEED_MODEL, compile=False).predict(tokens, verbose=0)
    return {"training": _converted(SEED_MODEL, folder / "seed.onnx", False),
            "stripped": _converted(SEED_MODEL, folder / "seed_s.onnx", True),
            "tokens": tokens, "expected": expected}


# --- Structure ------------------------------------------------------------------------------


def test_zoo_layers_are_fused_where_the_pattern_allows(zoo: dict[str, Any]) -> None:
    notes = zoo["training"]["notes"]
    assert set(notes) == set(TRAINING_FUSED)
    for layer, fused in TRAINING_FUSED.items():
        assert ("fused into" in notes[layer]) == fused, notes[layer]
    assert "recurrent dropout" in notes["gru_rd"] and "recurrent dropout" in notes["bi_lstm"]
    assert "'linear'" in notes["gru_linear"]
    assert "input dropout mask" in notes["gru_d"] and "one per direction" in notes["bi_gru"]
    assert "linear_before_reset=1" in notes["gru_d"]
    assert "GRU(reverse)" in notes["gru_back"]  # reset_after=False: no linear_before_reset
    assert "GRU(bidirectional" in notes["bi_gru_sum"]
    # gru_d, bi_gru (two ops: each direction has its mask), bi_gru_sum, gru_back; lstm_bottom
    ops = _ops(zoo["training"]["model"])
    assert ops.get("GRU") == 5 and ops.get("LSTM") == 1
    assert ops.get("Loop") == 5  # gru_rd, lstm_top, bi_lstm (2), gru_linear


def test_stripped_zoo_fuses_every_layer_the_op_can_compute(zoo: dict[str, Any]) -> None:
    notes = zoo["stripped"]["notes"]
    assert all("fused into" in notes[layer] for layer in TRAINING_FUSED
               if layer != "gru_linear")
    assert "GRU(bidirectional" in notes["bi_gru"]  # no masks left: one op for both directions
    ops = _ops(zoo["stripped"]["model"])
    assert ops.get("GRU") == 5 and ops.get("LSTM") == 3 and ops.get("Loop") == 1


def test_input_dropout_mask_stands_before_the_fused_op(zoo: dict[str, Any]) -> None:
    """The fused GRU reads x * mask, the mask a SpatialDropout of a [batch, features] tensor
    unsqueezed over time: one mask per sequence, shared by every step."""
    model = zoo["training"]["model"]
    made = {o: n for n in model.graph.node for o in n.output}
    gru = next(n for n in model.graph.node if n.op_type == "GRU" and n.name.startswith("gru_d/"))
    transpose = made[gru.input[0]]
    multiply = made[transpose.input[0]]
    assert multiply.op_type == "Mul"
    unsqueeze = made[multiply.input[1]]
    assert unsqueeze.op_type == "Unsqueeze"
    assert onnx.numpy_helper.to_array(next(
        t for t in model.graph.initializer if t.name == unsqueeze.input[1])).tolist() == [1]
    mask = made[unsqueeze.input[0]]
    assert mask.op_type == "SpatialDropout" and mask.input[2] == "training_mode"


# --- Numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["training", "stripped"])
def test_zoo_inference_equals_keras(zoo: dict[str, Any], form: str) -> None:
    model = zoo[form]["model"]
    feeds = {"seq": zoo["seq"]}
    if form == "training":
        feeds["training_mode"] = np.array(False)
    got = runner("ort_body", model)(feeds)
    for name, value, expected in zip(zoo["names"], got, zoo["expected"], strict=True):
        assert value.shape == expected.shape, name
        np.testing.assert_allclose(value, expected, atol=TOLERANCE, err_msg=name)


def test_zoo_training_mode_matches_keras_statistically(zoo: dict[str, Any]) -> None:
    """Training mode through the fused ops (with their input dropout) draws like Keras."""
    runs = 96
    seq = zoo["seq"]
    run = runner("ort_body", zoo["training"]["model"])
    ours = [run({"seq": seq, "training_mode": np.array(True)}) for _ in range(runs)]
    theirs = [zoo["keras_model"](seq, training=True) for _ in range(runs)]
    for index, name in enumerate(zoo["names"]):
        got = np.stack([o[index] for o in ours])
        if name in FUSED_RANDOM:
            want = np.stack([np.asarray(t[name]) for t in theirs])
            assert not np.array_equal(got[0], got[1]), name
            assert_same_distribution(got, want, name)
        elif name in ("bi_gru_sum", "gru_back", "gru_linear"):  # no dropout: unchanged
            np.testing.assert_allclose(got, np.broadcast_to(zoo["expected"][index], got.shape),
                                       atol=TOLERANCE, err_msg=name)


# --- The seed model ---------------------------------------------------------------------------


def test_seed_decoder_is_fused_and_the_encoder_keeps_its_loop_in_training(
        seed: dict[str, Any]) -> None:
    training, stripped = seed["training"], seed["stripped"]
    assert "fused into the ONNX GRU(forward, linear_before_reset=1)" in training["notes"]["decoder"]
    assert "recurrent dropout" in training["notes"]["encoder"]
    assert _ops(training["model"]).get("Loop") == 1 and _ops(training["model"]).get("GRU") == 1
    assert all("fused into" in note for note in stripped["notes"].values())
    assert set(stripped["notes"]) == {"encoder", "decoder"}
    ops = _ops(stripped["model"])
    assert ops.get("GRU") == 2 and "Loop" not in ops


def test_seed_training_form_still_equals_keras_and_draws(seed: dict[str, Any]) -> None:
    run = runner("ort_body", seed["training"]["model"])
    off = run({"tokens": seed["tokens"], "training_mode": np.array(False)})[0]
    np.testing.assert_allclose(off, seed["expected"], atol=TOLERANCE)
    first, second = (run({"tokens": seed["tokens"], "training_mode": np.array(True)})[0]
                     for _ in range(2))
    assert not np.array_equal(first, second)
    assert np.abs(first - seed["expected"]).max() > 1e-3


@pytest.mark.parametrize("kind", ["reference", "openvino", "tract"])
def test_fused_seed_inference_form_runs_in_other_runtimes(seed: dict[str, Any],
                                                          kind: str) -> None:
    """The stripped seed model (two GRU ops, no Loop) in onnx.reference, OpenVINO and tract.

    tract is given the batch size: tf2onnx's RepeatVector reshape computes its target
    shape through int32 casts, which tract does not resolve for a symbolic batch
    ("shape input is variable"; not the GRU op).
    """
    model, tokens = seed["stripped"]["model"], seed["tokens"]
    if kind == "tract":
        tract = require("tract")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "seed.onnx"
            onnx.save(model, path)
            loaded = tract.onnx().load(str(path))
            loaded.set_input_fact(0, f"{tokens.shape[0]},{tokens.shape[1]},i32")
            runnable = loaded.into_model().into_runnable()
        got = runnable.run([tokens])[0].to_numpy()
    else:
        got = runner(kind, model)({"tokens": tokens})[0]
    assert got.shape == seed["expected"].shape
    np.testing.assert_allclose(got, seed["expected"], atol=TOLERANCE)
