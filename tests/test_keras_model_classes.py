"""``convert`` on the Keras model classes that used to fail (issue 17, item 3).

One real model per class, written here and converted once per session through the CLI:
the MobileNet v1 head (a layout ``Reshape`` between the dropout's scaled value and its
mask), ``MultiHeadAttention(dropout=...)`` (item 1), a subclassed model built on
``keras.Input``, Monte-Carlo dropout (Keras random at inference), a drop path whose
training call fails in Keras, a tf2onnx failure's reason, a Keras 2 ``.h5`` file and a
tf-keras SavedModel.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import keras_models as km
import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction
from keras_cli_runner import CliResult, assert_one_line_error, run, run_cli, session

from spatialdrop_onnx.errors import ExitCode

TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras_classes")


def _convert(keras_model: Any, folder: Path, name: str, *extra: str) -> CliResult:
    source = folder / f"{name}.keras"
    keras_model.save(source)
    return run_cli("convert", source, "-o", folder / f"{name}.onnx", "--json", *extra)


def _sites(result: CliResult) -> dict[str, dict[str, Any]]:
    return {site["path"]: site for site in result.report["sites"]}


# --- MobileNet v1 head: a layout Reshape between the scaled value and the mask -------------


@pytest.fixture(scope="session")
def mobilenet(keras: Any, folder: Path) -> dict[str, Any]:
    model = km.mobilenet_head_model(keras)
    result = _convert(model, folder, "mobilenet")
    return {"model": model, "result": result, "path": folder / "mobilenet.onnx"}


def test_mobilenet_head_dropout_is_kept(mobilenet: dict[str, Any]) -> None:
    result = mobilenet["result"]
    assert result.code == 0, result.stderr
    site = _sites(result)["head_dropout"]
    assert site["training"] == "kept" and site["converted_to"] == ["Dropout(ratio=0.3)"], site
    image = np.random.default_rng(1).standard_normal((300, 8, 8, 3)).astype(np.float32)
    dropped, logits = mobilenet["model"].predict(image, verbose=0)
    sess = session(str(mobilenet["path"]), keep_dropout=True)
    inference = run(sess, {"image": image}, False)
    assert float(np.max(np.abs(inference["flat"] - logits))) <= TOLERANCE
    pooled = inference["head_dropout"]  # the identity in inference: Keras' pooled features
    assert float(np.max(np.abs(pooled - dropped))) <= TOLERANCE
    training = run(sess, {"image": image}, True)["head_dropout"]
    assert training.shape == pooled.shape == (300, 1, 1, 6)
    # Element-wise: each pooled value dropped or scaled by 1/(1-rate) (one float32 ulp).
    expected = (pooled.astype(np.float64) / 0.7).astype(np.float32)
    kept = np.abs(training - expected) <= np.spacing(np.abs(expected))
    assert np.all(kept | (training == 0))
    assert_drop_fraction(kept, 0.3)


# --- MultiHeadAttention(dropout=...): attention dropout through convert ---------------------


@pytest.fixture(scope="session")
def attention(keras: Any, folder: Path) -> dict[str, Any]:
    model = km.attention_model(keras)
    return {"model": model, "result": _convert(model, folder, "attention"),
            "path": folder / "attention.onnx"}


def test_attention_dropout_is_kept(attention: dict[str, Any]) -> None:
    """The attention probabilities' dropout (the layer's own Dropout) is a site of its own;
    training_mode false equals Keras' inference, true samples what Keras' training call
    samples: per-element means and deviations over 200 runs agree."""
    result = attention["result"]
    assert result.code == 0, result.stderr
    # The layer's inner Dropout is named by Keras' counter (dropout, dropout_1, ...).
    [site] = [s for path, s in _sites(result).items() if path.startswith("mha/")]
    assert site["layer_class"] == "Dropout", site
    assert site["training"] == "kept" and site["converted_to"] == ["Dropout(ratio=0.3)"], site
    model = attention["model"]
    x = np.random.default_rng(5).standard_normal((8, 5, 8)).astype(np.float32)
    sess = session(str(attention["path"]), keep_dropout=True)
    inference = run(sess, {"tokens": x}, False)["scores"]
    assert float(np.max(np.abs(inference - model.predict(x, verbose=0)))) <= TOLERANCE
    runs = 200
    keras_runs = np.stack([np.asarray(model(x, training=True)) for _ in range(runs)])
    onnx_runs = np.stack([run(sess, {"tokens": x}, True)["scores"] for _ in range(runs)])
    assert float(onnx_runs.std(0).min()) > 0  # every output element is random in training
    error = np.sqrt((keras_runs.var(0) + onnx_runs.var(0)) / runs)
    z = np.abs(keras_runs.mean(0) - onnx_runs.mean(0)) / error
    # Equal distributions: about 0.8 (0.68-0.91 seen: the elements of a row share masks).
    assert float(z.mean()) < 1.4, float(z.mean())
    ratio = onnx_runs.std(0) / keras_runs.std(0)
    assert 0.9 < float(np.median(ratio)) < 1.1, float(np.median(ratio))


# --- Subclassed keras.Model built on keras.Input ----------------------------------------


@pytest.mark.parametrize("dict_inputs", [False, True], ids=["one-input", "dict-inputs"])
def test_subclassed_model_converts_from_its_build_config(keras: Any, folder: Path,
                                                         dict_inputs: bool) -> None:
    model = km.subclassed_model(keras, dict_inputs)
    name = f"subclassed_{int(dict_inputs)}"
    result = _convert(model, folder, name)
    assert result.code == 0, result.stderr
    inputs = {i["name"]: i["shape"] for i in result.report["inputs"]}
    rng = np.random.default_rng(2)
    if dict_inputs:
        assert inputs == {"extra": ["batch", 2], "numbers": ["batch", 5],
                          "training_mode": []}
        feeds = {"numbers": rng.standard_normal((9, 5)).astype(np.float32),
                 "extra": rng.standard_normal((9, 2)).astype(np.float32)}
        expected = model.predict(feeds, verbose=0)
    else:
        assert inputs == {"input": ["batch", 7], "training_mode": []}
        feeds = {"input": rng.standard_normal((9, 7)).astype(np.float32)}
        expected = model.predict(feeds["input"], verbose=0)
    assert _sites(result)["dropout"]["training"] == "kept"
    sess = session(str(folder / f"{name}.onnx"), keep_dropout=True)
    (got,) = run(sess, feeds, False).values()
    assert float(np.max(np.abs(got - expected))) <= TOLERANCE
    first, second = (next(iter(run(sess, feeds, True).values())) for _ in range(2))
    assert not np.array_equal(first, second)


# --- Monte-Carlo dropout: Keras itself random at inference ------------------------------


@pytest.fixture(scope="session")
def monte_carlo(keras: Any, folder: Path) -> dict[str, Any]:
    model = km.monte_carlo_model(keras)
    return {"model": model, "result": _convert(model, folder, "mc"),
            "path": folder / "mc.onnx", "source": folder / "mc.keras"}


def test_monte_carlo_dropout_is_compared_statistically(monte_carlo: dict[str, Any]) -> None:
    result = monte_carlo["result"]
    assert result.code == 0, result.stderr
    report = result.report
    check = report["self_check"]
    assert check["method"] == "statistical", check
    assert check["random"]["layers"] == ["mc_dropout"] and check["random"]["runs"] >= 16
    assert check["random"]["keras_spread"] > 0.01
    warning = next(w for w in report["warnings"] if "random at inference" in w)
    assert "'mc_dropout'" in warning and "training_mode" in warning
    assert not any("ill-conditioned" in w for w in report["warnings"])
    assert _sites(result)["mc_dropout"]["training"] == "kept"


def test_monte_carlo_model_samples_like_keras(monte_carlo: dict[str, Any]) -> None:
    """With training_mode true the ONNX model draws what Keras draws at inference:
    per-element means and deviations over 200 runs agree (independent of the self-check)."""
    model = monte_carlo["model"]
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    runs = 200
    keras_runs = np.stack([np.asarray(model(x, training=False)) for _ in range(runs)])
    sess = session(str(monte_carlo["path"]), keep_dropout=True)
    onnx_runs = np.stack([run(sess, {"x": x}, True)["out"] for _ in range(runs)])
    error = np.sqrt((keras_runs.var(0) + onnx_runs.var(0)) / runs)
    z = np.abs(keras_runs.mean(0) - onnx_runs.mean(0)) / error
    assert float(z.mean()) < 1.6, z  # equal distributions: about 0.8
    ratio = onnx_runs.std(0) / keras_runs.std(0)
    assert 0.8 < float(np.median(ratio)) < 1.25, ratio
    # training_mode false: deterministic (the mean-field model), unlike Keras.
    first, second = (run(sess, {"x": x}, False)["out"] for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_monte_carlo_self_check_refuses_a_wrong_rate(monte_carlo: dict[str, Any],
                                                     keras: Any) -> None:
    """The statistical comparison can fail: the same model with dropout 0.05 in ONNX."""
    from spatialdrop_onnx.converters.keras_stack import import_keras_stack
    from spatialdrop_onnx.converters.keras_trace import keras_input_specs
    from spatialdrop_onnx.converters.keras_verify import (
        VerificationMismatch,
        verify_against_keras,
    )

    converted = onnx.load(monte_carlo["path"])
    dropout = next(n for n in converted.graph.node if n.op_type == "Dropout")
    ratio = next(n for n in converted.graph.node if n.output[0] == dropout.input[1])
    ratio.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(
        np.array(0.05, np.float64), ratio.attribute[0].t.name))
    stack = import_keras_stack()
    specs = keras_input_specs(monte_carlo["model"], stack)
    with pytest.raises(VerificationMismatch, match="does not match it statistically"):
        verify_against_keras(converted, monte_carlo["model"], specs, ["x"], stack)


def test_monte_carlo_strip_is_refused(monte_carlo: dict[str, Any], folder: Path) -> None:
    out = folder / "mc_stripped.onnx"
    result = run_cli("convert", monte_carlo["source"], "-o", out, "--strip")
    assert_one_line_error(result, ExitCode.INVALID, "random", "--strip", "training_mode")
    assert not out.exists()


# --- A random layer whose training call fails in Keras itself ---------------------------


def test_layer_failing_in_training_mode_is_named_and_partial(keras: Any,
                                                             folder: Path) -> None:
    result = _convert(km.failing_drop_path_model(keras), folder, "drop_path")
    assert result.code == ExitCode.PARTIAL, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "'block/drop_path' (BatchDropPath)" in error, error
    assert "'block'" not in error  # the container is not blamed
    sites = _sites(result)
    broken = sites["block/drop_path"]
    assert broken["training"] == "inference-only"
    assert "fails in Keras itself" in broken["note"] and "(None, 1)" in broken["note"]
    assert sites["dropout"]["training"] == "kept"  # the rest still converts
    assert "block" not in sites


# --- tf2onnx failures keep their reason -------------------------------------------------


def test_tf2onnx_failure_keeps_its_reason(keras: Any, folder: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A long tf2onnx/TensorFlow message ends with why; the one-line error keeps that tail."""
    from spatialdrop_onnx.converters import keras_convert

    reason = "Status Message: No registered kernel for op FancyOp"
    message = "Node 'model/block/FancyOp' " + "in function x " * 60 + reason

    def failing_export(*_: Any, **__: Any) -> None:
        raise ValueError(message)

    monkeypatch.setattr(keras_convert, "export_traced", failing_export)
    source = folder / "tiny_for_failure.keras"
    km.tiny_dense_model(keras).save(source)
    result = run_cli("convert", source, "-o", folder / "failure.onnx")
    assert_one_line_error(result, ExitCode.INVALID, "tf2onnx", "ValueError",
                          "Node 'model/block/FancyOp'", reason)


def test_first_line_joins_keras_reason_and_keeps_the_tail() -> None:
    from spatialdrop_onnx.converters.keras_stack import first_line

    keras_style = TypeError("Exception encountered when calling DropPath.call().\n\n"
                            "\x1b[1mFailed to convert elements of (None, 1) to Tensor.\x1b[0m\n\n"
                            "Arguments received by DropPath.call():\n  • x=tf.Tensor()")
    assert first_line(keras_style) == ("Exception encountered when calling DropPath.call(). "
                                       "Failed to convert elements of (None, 1) to Tensor.")
    long = ValueError("head " + "x" * 5000 + " Status Message: the reason")
    cut = first_line(long, limit=300)
    assert len(cut) <= 300 and cut.startswith("head ") and cut.endswith("the reason")


# --- Keras 2 files ----------------------------------------------------------------------


def test_keras2_h5_converts(keras: Any, folder: Path) -> None:
    source = folder / "keras2.h5"
    twin = km.write_keras2_h5(keras, source)
    out = folder / "keras2.onnx"
    result = run_cli("convert", source, "-o", out, "--trust-model", "--json")
    assert result.code == 0, result.stderr
    sites = _sites(result)
    assert sites["spatial_dropout"]["converted_to"] == [
        "SpatialDropout(shared_axes=[1], ratio=0.2)"]
    assert sites["word_drop"]["training"] == "kept"
    assert sites["encoder"]["kind"] == "rnn_dropout" and sites["encoder"]["training"] == "kept"
    tokens = np.random.default_rng(4).integers(0, 10, size=(5, 6)).astype(np.int32)
    expected = twin.predict(tokens, verbose=0)  # the Keras 2 file holds the twin's weights
    (got,) = run(session(str(out)), {"tokens": tokens}, False).values()
    assert float(np.max(np.abs(got - expected))) <= TOLERANCE


def test_keras2_setting_keras3_lacks_is_refused_by_name(keras: Any, folder: Path) -> None:
    """A Keras 2 setting that changes the computation is never dropped silently."""
    import h5py

    source = folder / "keras2_time_major.h5"
    km.write_keras2_h5(keras, source)
    config = km.keras2_seed_like_config()
    encoder = next(layer for layer in config["config"]["layers"] if layer["name"] == "encoder")
    encoder["config"]["time_major"] = True
    with h5py.File(source, "r+") as handle:
        handle.attrs["model_config"] = json.dumps(config)
    result = run_cli("convert", source, "-o", folder / "tm.onnx", "--trust-model")
    assert_one_line_error(result, ExitCode.INVALID, "'encoder'", "GRU", "time_major=true")


def test_tf_keras_savedmodel_lists_its_lost_layers(keras: Any, folder: Path) -> None:
    """A SavedModel converts from its inference signature; with tf-keras' metadata the
    random layers it lists are named and the result is partial."""
    saved = folder / "tf_keras_savedmodel"
    km.tiny_dense_model(keras).export(saved, verbose=False)
    entries = [{"class_name": "Dense", "name": "hidden", "config": {"name": "hidden"}},
               {"class_name": "Dropout", "name": "dropout",
                "config": {"name": "dropout", "trainable": True, "dtype": "float32",
                           "rate": 0.25, "noise_shape": None, "seed": None}},
               {"class_name": "SpatialDropout1D", "name": "unused_rate_0",
                "config": {"name": "unused_rate_0", "rate": 0.0}}]
    (saved / "keras_metadata.pb").write_bytes(km.encode_keras_metadata(entries))
    result = run_cli("convert", saved, "-o", folder / "sm.onnx", "--trust-model", "--json")
    assert result.code == ExitCode.PARTIAL, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("'dropout' (Dropout)")
    (site,) = result.report["sites"]
    assert (site["path"], site["training"], site["rate"]) == ("dropout", "inference-only", 0.25)
    assert "serving signature" in site["note"]
    # The same folder without the metadata: nothing known to be lost, exit 0 with a warning.
    plain = folder / "plain_savedmodel"
    shutil.copytree(saved, plain)
    (plain / "keras_metadata.pb").unlink()
    result = run_cli("convert", plain, "-o", folder / "plain.onnx", "--trust-model", "--json")
    assert result.code == 0 and result.report["sites"] == []
    assert any("no Keras metadata" in w for w in result.report["warnings"])
    assert math.isfinite(result.report["max_abs_diff_vs_keras"])
