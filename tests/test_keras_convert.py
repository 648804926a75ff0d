"""``spatialdrop-onnx convert`` on real Keras 3 models: structure and numbers in onnxruntime.

Each model is built (or loaded) and converted once per session; the tests then
only run onnxruntime. TensorFlow is required in CI (``require`` fails there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras_models as km
import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction, assert_structurally_valid
from keras_cli_runner import run, run_cli, session
from optional import in_ci
from passes_helpers import all_nodes

import spatialdrop_onnx as sd
from spatialdrop_onnx.errors import ExitCode

SEED_TOLERANCE = 1e-5
LARGER_TOLERANCE = 1e-4
TF_RANDOM_OPS = ("StatelessRandomUniformV2", "StatelessRandomNormalV2",
                 "StatelessTruncatedNormalV2", "RandomUniform", "RandomStandardNormal")


# --- Session fixtures: one conversion per model --------------------------------------


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras_convert")


#: The zoo's layers the rewrite has no rule for (normal noise, alpha dropout): exported for
#: inference only, so the conversion is partial (exit 5) and names them.
ZOO_INFERENCE_ONLY = ("gauss_drop", "gauss_noise", "alpha_drop")


def _convert(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("convert", source, "-o", out, "--json", *extra)
    assert result.code == 0, result.stderr
    return result.report


@pytest.fixture(scope="session")
def seed(keras: Any, workdir: Path) -> dict[str, Any]:
    out = workdir / "seed.onnx"
    report = _convert(km.SEED_MODEL, out)
    stripped = workdir / "seed_stripped.onnx"
    strip_report = _convert(km.SEED_MODEL, stripped, "--strip")
    model = keras.saving.load_model(km.SEED_MODEL, compile=False)
    tokens = np.random.default_rng(11).integers(0, 10, size=(64, 6)).astype(np.int32)
    return {"path": out, "report": report, "stripped": stripped, "strip_report": strip_report,
            "keras": model, "tokens": tokens,
            "expected": model.predict(tokens, verbose=0)}


@pytest.fixture(scope="session")
def zoo(keras: Any, workdir: Path) -> dict[str, Any]:
    source = workdir / "zoo.keras"
    km.dropout_zoo(keras).save(source)
    out = workdir / "zoo.onnx"
    result = run_cli("convert", source, "-o", out, "--json")
    assert result.code == ExitCode.PARTIAL, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("spatialdrop-onnx: error: wrote "), result.stderr
    assert all(f"'{name}'" in error for name in ZOO_INFERENCE_ONLY), error
    report = result.report
    model = keras.saving.load_model(source, compile=False)
    return {"path": out, "report": report, "keras": model, "onnx": onnx.load(out),
            "sites": {s["path"]: s for s in report["sites"]}}


@pytest.fixture(scope="session")
def cnn(keras: Any, workdir: Path) -> dict[str, Any]:
    from spatialdrop_onnx.converters.keras_export import export_keras_training_graph

    model = km.cnn_bn_model(keras)
    source = workdir / "cnn.keras"
    model.save(source)
    out = workdir / "cnn.onnx"
    report = _convert(source, out)
    return {"path": out, "report": report, "keras": model,
            "raw": export_keras_training_graph(model)}


def native_modes() -> list[Any]:
    """The function-body path always; the native kernel when the build provides it."""
    available = hasattr(sd, "session_options")
    reason = "spatialdrop_onnx.session_options (native kernel) is not available"
    marks = [] if available else [pytest.mark.skipif(not in_ci(), reason=reason)]
    return [pytest.param(False, id="function-body"),
            pytest.param(True, id="native-kernel", marks=marks)]


# --- Helpers ---------------------------------------------------------------------------


def _producer_through_identity(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers[name]
    while node.op_type == "Identity":
        node = producers[node.input[0]]
    return node


def _scalar(model: onnx.ModelProto, name: str) -> float:
    for init in model.graph.initializer:
        if init.name == name:
            return float(onnx.numpy_helper.to_array(init))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return float(onnx.numpy_helper.to_array(node.attribute[0].t))
    raise AssertionError(f"{name} is not a constant")


def _shared_axes(node: onnx.NodeProto) -> list[int]:
    return next(list(a.ints) for a in node.attribute if a.name == "shared_axes")


def assert_valid_training_model(model: onnx.ModelProto) -> None:
    """Full checker, one bool training_mode input defaulting to false, bodies, no TF op."""
    onnx.checker.check_model(model, full_check=True)
    inputs = [i for i in model.graph.input if i.name == "training_mode"]
    assert len(inputs) == 1
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    default = [i for i in model.graph.initializer if i.name == "training_mode"]
    assert len(default) == 1 and not bool(onnx.numpy_helper.to_array(default[0]))
    ops = {n.op_type for n in all_nodes(model)}
    assert not ops & set(TF_RANDOM_OPS), ops & set(TF_RANDOM_OPS)
    assert all(onnx.defs.has(n.op_type) or n.domain == sd.DOMAIN
               for n in all_nodes(model))
    if any(n.domain == sd.DOMAIN for n in all_nodes(model)):
        assert any(f.domain == sd.DOMAIN and f.name == sd.OP_TYPE for f in model.functions)


def assert_dynamic_batch(model: onnx.ModelProto) -> None:
    for info in [*model.graph.input, *model.graph.output]:
        if info.name != "training_mode":
            assert info.type.tensor_type.shape.dim[0].dim_param == "batch", info


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# --- The seed model --------------------------------------------------------------------


def test_seed_model_structure(seed: dict[str, Any]) -> None:
    model = onnx.load(seed["path"])
    assert_valid_training_model(model)
    assert_dynamic_batch(model)
    # The SpatialDropout1D: one node sharing the time axis (RNN masks may use the op
    # too, with no shared axis).
    spatial = [n for n in all_nodes(model)
               if n.op_type == sd.OP_TYPE and _shared_axes(n) == [1]]
    assert len(spatial) == 1
    assert _scalar(model, spatial[0].input[1]) == pytest.approx(0.2, abs=1e-6)
    sites = {s["path"]: s for s in seed["report"]["sites"]}
    assert sites["spatial_dropout"]["training"] == "kept"
    assert sites["spatial_dropout"]["converted_to"][0].startswith("SpatialDropout(shared_axes=[1]")
    assert sites["encoder"]["kind"] == "rnn_dropout" and sites["encoder"]["training"] == "kept"
    assert sites["encoder"]["converted_to"]  # the masks, attributed to the GRU layer
    assert seed["report"]["max_abs_diff_vs_keras"] <= SEED_TOLERANCE


@pytest.mark.parametrize("native", native_modes())
def test_seed_inference_equals_keras_predict(seed: dict[str, Any], native: bool) -> None:
    sess = session(str(seed["path"]), native=native)
    for training in (None, False):  # default and explicit false
        got = run(sess, {"tokens": seed["tokens"]}, training)["probs"]
        assert max_diff(got, seed["expected"]) <= SEED_TOLERANCE


def test_seed_dynamic_batch_sizes(seed: dict[str, Any]) -> None:
    sess = session(str(seed["path"]))
    for batch in (1, 7):
        got = run(sess, {"tokens": seed["tokens"][:batch]}, False)["probs"]
        assert max_diff(got, seed["expected"][:batch]) <= SEED_TOLERANCE


@pytest.mark.parametrize("native", native_modes())
def test_seed_training_mode_is_random(seed: dict[str, Any], native: bool) -> None:
    sess = session(str(seed["path"]), native=native, keep_dropout=True)
    feeds = {"tokens": seed["tokens"]}
    first, second = (run(sess, feeds, True)["probs"] for _ in range(2))
    assert not np.array_equal(first, second)  # masks change from run to run
    assert max_diff(first, seed["expected"]) > 1e-3
    np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)  # still a softmax


def test_seed_strip_equals_inference(seed: dict[str, Any]) -> None:
    stripped = onnx.load(seed["stripped"])
    onnx.checker.check_model(stripped, full_check=True)
    assert not any(n.domain == sd.DOMAIN for n in all_nodes(stripped))
    assert not any(n.op_type in ("Dropout", *TF_RANDOM_OPS) for n in all_nodes(stripped))
    assert [i.name for i in stripped.graph.input] == ["tokens"]
    assert seed["strip_report"]["training_input"] is None
    feeds = {"tokens": seed["tokens"]}
    inference = run(session(str(seed["path"])), feeds, False)["probs"]
    got = run(session(str(seed["stripped"])), feeds, None)["probs"]
    # The stripped encoder is the fused GRU op; in the full model its recurrent dropout keeps
    # tf2onnx's loop (docs/keras.md): equal to float rounding, no longer bit for bit.
    assert (got != inference).any()
    np.testing.assert_allclose(got, inference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["batch", "loop"])
def test_seed_monte_carlo_model(seed: dict[str, Any], strategy: str) -> None:
    """The main job's step 3: the seed model's MC model agrees with N separate runs of the
    converted model and is less sure of the tokens it gets wrong. Folding is valid, so the
    Loop folds samples too: at 256 sequences, 8 of the 32 per iteration (4 iterations)."""
    samples = 32
    model, report = sd.monte_carlo(seed["path"], samples=samples, strategy=strategy)
    assert report.foldable and report.chunked == (strategy == "loop")
    # One random site per dropout node of the converted model (a SpatialDropout1D, and a
    # mask per GRU gate for the input and the recurrent dropout: distinct draws per gate).
    converted = onnx.load(seed["path"])
    dropout_nodes = sum(n.op_type in (sd.OP_TYPE, "Dropout") for n in all_nodes(converted))
    assert report.strategy == strategy and report.random_sites == dropout_nodes == 7
    tokens = np.random.default_rng(2024).integers(0, 10, size=(256, 6)).astype(np.int32)
    mean, std = sd.inference_session(model).run(None, {"tokens": tokens})
    source = session(str(seed["path"]))
    runs = np.stack([run(source, {"tokens": tokens}, True)["probs"] for _ in range(samples)])
    ref_mean, ref_std = runs.mean(0), runs.std(0)
    varying = (std > 1e-3) & (ref_std > 1e-3)
    z = (mean - ref_mean)[varying] / np.sqrt((std**2 + ref_std**2)[varying] / samples)
    assert abs(float(np.mean(np.abs(z))) - math.sqrt(2 / math.pi)) < 0.15  # |N(0,1)|: 0.80
    assert 0.85 < float(np.median(std[varying] / ref_std[varying])) < 1.15
    predicted = mean.argmax(-1)
    correct = predicted == tokens[:, ::-1]  # the seed model reverses its input
    deviation = np.take_along_axis(std, predicted[..., None], axis=-1)[..., 0]
    assert 0.9 < correct.mean() < 1
    assert deviation[~correct].mean() > 1.2 * deviation[correct].mean()


# --- Every dropout layer type and data format ---------------------------------------


def test_zoo_structure(zoo: dict[str, Any]) -> None:
    model = onnx.load(zoo["path"])
    assert_valid_training_model(model)
    assert_dynamic_batch(model)
    for name, (rate, axes) in km.ZOO_SPATIAL.items():
        node = _producer_through_identity(model, name)
        assert (node.domain, node.op_type) == (sd.DOMAIN, sd.OP_TYPE), (name, node.op_type)
        assert _shared_axes(node) == list(axes), name
        assert _scalar(model, node.input[1]) == pytest.approx(rate, abs=1e-6), name
        assert zoo["sites"][name]["training"] == "kept"
    drop = _producer_through_identity(model, "drop")
    assert drop.op_type == "Dropout" and drop.domain == ""
    assert _scalar(model, drop.input[1]) == pytest.approx(km.ZOO_DROPOUT_RATE, abs=1e-6)
    assert zoo["sites"]["no_drop"]["training"] == "none"


@pytest.mark.parametrize("native", native_modes())
def test_zoo_inference_equals_keras_predict(zoo: dict[str, Any], native: bool) -> None:
    feeds = km.zoo_inputs(16)
    expected = dict(zip(zoo["keras"].output_names,
                        zoo["keras"].predict(list(feeds.values()), verbose=0), strict=True))
    got = run(session(str(zoo["path"]), native=native), feeds, False)
    for name, want in expected.items():
        assert max_diff(got[name], want) <= SEED_TOLERANCE, name


@pytest.mark.parametrize("native", native_modes())
@pytest.mark.parametrize("name", sorted(km.ZOO_SPATIAL))
def test_zoo_whole_channels_drop_at_the_layer_rate(zoo: dict[str, Any], name: str,
                                                   native: bool) -> None:
    rate, axes = km.ZOO_SPATIAL[name]
    node = _producer_through_identity(zoo["onnx"], name)
    ratio = _scalar(zoo["onnx"], node.input[1])  # the float32 rate: kept values scale by it
    feeds = km.zoo_inputs(400, seed=1)
    got = run(session(str(zoo["path"]), native=native, keep_dropout=True), feeds, True)[name]
    keep = assert_structurally_valid(feeds[km.ZOO_SPATIAL_INPUT[name]], got, ratio, axes)
    assert_drop_fraction(keep, rate)


def test_zoo_plain_dropout_is_elementwise(zoo: dict[str, Any]) -> None:
    ratio = _scalar(zoo["onnx"], _producer_through_identity(zoo["onnx"], "drop").input[1])
    feeds = km.zoo_inputs(200, seed=2)
    x = feeds["seq"]
    got = run(session(str(zoo["path"]), keep_dropout=True), feeds, True)["drop"]
    # ONNX Dropout: each element dropped or scaled by 1/(1-ratio); onnxruntime
    # rounds the scale in float32, so allow one ulp.
    expected = (x.astype(np.float64) / (1.0 - ratio)).astype(np.float32)
    kept = np.abs(got - expected) <= np.spacing(expected)
    assert np.all(kept | (got == 0))
    assert_drop_fraction(kept, km.ZOO_DROPOUT_RATE)


def test_zoo_dropout_called_through_its_wrapper(zoo: dict[str, Any]) -> None:
    """TimeDistributed calls the inner Dropout's ``call`` directly; it is still found and kept."""
    site = zoo["sites"]["td_drop/inner_drop"]
    assert site["training"] == "kept" and site["converted_to"], site
    feeds = km.zoo_inputs(200, seed=5)
    got = run(session(str(zoo["path"]), keep_dropout=True), feeds, True)["td_drop"]
    assert_drop_fraction(got != 0, 0.1)


def test_zoo_lstm_masks_change_between_runs(zoo: dict[str, Any]) -> None:
    sess = session(str(zoo["path"]), keep_dropout=True)
    feeds = km.zoo_inputs(32, seed=3)
    inference = run(sess, feeds, False)["lstm"]
    first, second = (run(sess, feeds, True)["lstm"] for _ in range(2))
    assert not np.array_equal(first, second)
    assert max_diff(first, inference) > 1e-3
    assert zoo["sites"]["lstm"]["training"] == "kept"


#: The zoo's noise layers no rewrite rule converts, with the random TensorFlow op each
#: leaves (normal noise has no rule; alpha dropout's affine form none either).
ZOO_NOISE_OPS = {"gauss_drop": "StatelessRandomNormalV2", "gauss_noise": "StatelessRandomNormalV2",
                 "alpha_drop": "StatelessRandomUniformV2"}


@pytest.mark.parametrize("name", sorted(ZOO_NOISE_OPS))
def test_zoo_noise_layer_is_exported_inference_only_and_reported(zoo: dict[str, Any],
                                                                  name: str) -> None:
    """GaussianDropout/GaussianNoise/AlphaDropout: no rule converts them, so the layer is
    traced in inference mode, named in the report with the op and the reason, and the
    conversion is partial (the fixture checks exit 5 and the error naming the layer)."""
    site = zoo["sites"][name]
    assert site["training"] == "inference-only" and site["converted_to"] == [], site
    assert ZOO_NOISE_OPS[name] in site["note"] and "inference only" in site["note"], site
    assert any(w.startswith(f"{name} (") for w in zoo["report"]["warnings"])
    assert zoo["report"]["partial"] is True
    # What really happens: the identity, with training_mode true as well.
    feeds = km.zoo_inputs(64, seed=4)
    got = run(session(str(zoo["path"]), keep_dropout=True), feeds, True)[name]
    np.testing.assert_array_equal(got, feeds["seq"])


# --- Conv2D + BatchNormalization + SpatialDropout2D, with tf2onnx's Transpose -----------


def test_cnn_raw_export_has_transpose_between_conv_and_dropout(cnn: dict[str, Any]) -> None:
    """The case this model exists for: the dropout mask multiplies a transposed tensor."""
    raw = cnn["raw"]
    producers = {o: n for n in raw.graph.node for o in n.output}
    select_muls = [n for n in raw.graph.node if n.op_type == "Mul"
                   and {producers[i].op_type for i in n.input if i in producers}
                   >= {"Cast", "Transpose"}]
    assert select_muls, "expected Mul(Cast(keep), Transpose(scaled)) in the raw export"


@pytest.mark.parametrize("native", native_modes())
def test_cnn_batchnorm_inference_equals_keras_predict(cnn: dict[str, Any], native: bool) -> None:
    image = np.random.default_rng(5).standard_normal((8, 16, 16, 3)).astype(np.float32)
    features, probs = cnn["keras"].predict(image, verbose=0)
    got = run(session(str(cnn["path"]), native=native), {"image": image}, False)
    assert max_diff(got["features"], features) <= LARGER_TOLERANCE
    assert max_diff(got["probs"], probs) <= LARGER_TOLERANCE


def test_cnn_feature_maps_drop_whole(cnn: dict[str, Any]) -> None:
    model = onnx.load(cnn["path"])
    assert_valid_training_model(model)
    assert sum(n.op_type == sd.OP_TYPE for n in all_nodes(model)) == 1
    assert sum(n.op_type == "Dropout" for n in all_nodes(model)) == 1
    node = next(n for n in all_nodes(model) if n.op_type == sd.OP_TYPE)
    image = np.random.default_rng(6).standard_normal((64, 16, 16, 3)).astype(np.float32)
    sess = session(str(cnn["path"]), keep_dropout=True)
    reference = run(sess, {"image": image}, False)["features"]
    dropped = run(sess, {"image": image}, True)["features"]
    # NHWC output: one decision per (sample, channel), shared over H and W.
    keep = assert_structurally_valid(reference, dropped, _scalar(model, node.input[1]), (1, 2))
    assert_drop_fraction(keep, 0.3)


def test_cnn_head_dropout_samples_in_training_mode(cnn: dict[str, Any]) -> None:
    image = np.random.default_rng(8).standard_normal((16, 16, 16, 3)).astype(np.float32)
    sess = session(str(cnn["path"]), keep_dropout=True)
    first, second = (run(sess, {"image": image}, True)["probs"] for _ in range(2))
    assert not np.array_equal(first, second)


def test_onnxruntime_default_optimisation_deletes_onnx_dropout() -> None:
    """Why training-mode sessions pass ``disabled_optimizers=["EliminateDropout"]``.

    onnxruntime (non-training builds) removes an ONNX Dropout whose output is
    not a graph output even when ``training_mode`` is true. If this test starts
    failing, onnxruntime changed: update docs/keras.md and models/main_job.py.
    """
    from onnx import TensorProto
    from onnx import helper as oh

    graph = oh.make_graph(
        [oh.make_node("Mul", ["x", "one"], ["x1"]),  # Dropout input computed by a node
         oh.make_node("Dropout", ["x1", "ratio", "training_mode"], ["dropped"]),
         oh.make_node("Mul", ["dropped", "one"], ["y"])], "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [64]),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [oh.make_tensor("ratio", TensorProto.FLOAT, [], [0.5]),
         oh.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    feeds = {"x": np.ones(64, np.float32)}
    deleted = run(session(model), feeds, True)["y"]
    kept = run(session(model, keep_dropout=True), feeds, True)["y"]
    assert np.array_equal(deleted, feeds["x"])  # the Dropout was optimised away
    assert set(np.unique(kept)) == {0.0, 2.0}
