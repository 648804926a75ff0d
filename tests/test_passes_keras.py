"""Rewrite rules on real Keras 3 → tf2onnx exports (training mode, stateless RNG).

All exports come from ``models/export_keras.py`` through one session fixture
(importing TensorFlow and tracing is the slow part).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from optional import require
from passes_helpers import (
    assert_no_dropout,
    assert_same,
    check_noise_slices,
    count,
    flag,
    full_check,
    load_script,
    run,
    session,
)

import spatialdrop_onnx as sd

CONVERTIBLE = ["spatial1d", "conv1d_spatial1d", "spatial2d_last", "spatial2d_first",
               "conv2d_spatial2d_last", "spatial3d_last", "spatial3d_first", "conv3d_spatial3d",
               "dropout", "dropout_noise_shape", "cnn"]
RNN = ["gru", "lstm"]
NEAR_MISS = ["gaussian_dropout", "alpha_dropout"]


@pytest.fixture(scope="session")
def keras_exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require("tensorflow")
    require("tf2onnx")
    return load_script("export_keras").export_keras_models(tmp_path_factory.mktemp("keras"))


def _load(exports: dict, name: str) -> tuple[onnx.ModelProto, object]:
    export = exports[name]
    return onnx.load(export.path), export


def _feeds(export: object, training: bool | None = None) -> dict:
    feeds = {"x": export.sample}
    if training is not None:
        feeds["training_mode"] = flag(training)
    return feeds


@pytest.mark.parametrize("name", CONVERTIBLE + RNN)
def test_inspect_finds_each_keras_site(keras_exports: dict, name: str) -> None:
    model, export = _load(keras_exports, name)
    sites = sd.inspect(model)
    assert [s.kind for s in sites] == ["random-subgraph"] * len(export.expected_axes)
    assert [list(s.shared_axes) for s in sites] == export.expected_axes
    assert all(math.isclose(s.ratio, 0.3, rel_tol=1e-6) for s in sites)
    assert all(s.graph == "main" for s in sites)
    rules = {s.rule.split("_affine")[0] for s in sites}
    expected = {"keras_rnn_mask"} if name in RNN else {"keras_stateless_dropout"}
    assert rules <= expected


@pytest.mark.parametrize("name", CONVERTIBLE + RNN)
def test_rewrite_keras_export(keras_exports: dict, name: str) -> None:
    model, export = _load(keras_exports, name)
    rewritten, report = sd.rewrite(model)
    full_check(rewritten)
    assert not report.unconvertible
    assert count(rewritten, "StatelessRandomUniformV2") == 0
    becomes = [s.becomes for s in report.converted]
    expected = ["SpatialDropout" if axes or name in RNN else "Dropout"
                for axes in export.expected_axes]
    assert becomes == expected
    assert count(rewritten, sd.OP_TYPE) == becomes.count("SpatialDropout")
    assert count(rewritten, "Dropout") == becomes.count("Dropout")
    # One boolean switch with an initializer default of false (safe for simplifiers).
    flags = [i for i in rewritten.graph.input if i.name == "training_mode"]
    assert len(flags) == 1 and flags[0].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    default = next(i for i in rewritten.graph.initializer if i.name == "training_mode")
    assert onnx.numpy_helper.to_array(default).item() is False
    # The new nodes keep the name of the node whose output they replace.
    names = {n.name for n in rewritten.graph.node}
    assert {s.name for s in report.converted} <= names
    # Dynamic batch dim survives.
    assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    # Training off computes Keras' inference output.
    off = run(rewritten, _feeds(export, False))
    np.testing.assert_allclose(off[0], export.inference, rtol=1e-5, atol=1e-6)
    # Strip of the export and of the rewrite give exactly the training-off output.
    for source in (model, rewritten):
        stripped = sd.strip(source).model
        full_check(stripped)
        assert_no_dropout(stripped)
        assert_same(run(stripped, _feeds(export)), off)
    # Idempotent.
    assert sd.rewrite(rewritten).model.SerializeToString() == rewritten.SerializeToString()


@pytest.mark.parametrize("name", [n for n in CONVERTIBLE if n != "cnn"])
def test_keras_sites_in_training_mode(keras_exports: dict, name: str) -> None:
    """Each noise slice all kept (scaled exactly by 1/(1-ratio)) or all dropped."""
    model, export = _load(keras_exports, name)
    rewritten = sd.rewrite(model).model
    ratio = next(s.ratio for s in sd.inspect(model))
    off = run(rewritten, _feeds(export, False))[0]
    training = session(rewritten)
    outputs = [run(training, _feeds(export, True))[0] for _ in range(12)]
    dropped = 0.0
    for output in outputs:
        if export.output_axes:
            keep = check_noise_slices(off, output, ratio, export.output_axes)
            dropped += 1 - keep.mean()
        else:  # element-wise: onnxruntime's Dropout kernel scales in float
            kept = output != 0
            np.testing.assert_allclose(output[kept], off[kept] / (1 - ratio), rtol=1e-6)
            dropped += 1 - kept.mean()
    assert 0.1 < dropped / len(outputs) < 0.5
    assert len({o.tobytes() for o in outputs}) > 1, "the mask is the same on every run"


@pytest.mark.parametrize("name", RNN)
def test_rnn_masks_are_random_per_run_and_obey_the_switch(keras_exports: dict,
                                                          name: str) -> None:
    model, export = _load(keras_exports, name)
    rewritten = sd.rewrite(model).model
    training = session(rewritten)
    runs = {run(training, _feeds(export, True))[0].tobytes() for _ in range(6)}
    assert len(runs) > 1
    off = run(rewritten, _feeds(export, False))[0]
    np.testing.assert_allclose(off, export.inference, rtol=1e-5, atol=1e-6)
    # The masks (element-wise SpatialDropout of ones) feed the Loop.
    loop = next(n for n in rewritten.graph.node if n.op_type == "Loop")
    masks = [n for n in rewritten.graph.node if n.op_type == sd.OP_TYPE]
    assert len(masks) == 2 and {n.output[0] for n in masks} <= set(loop.input)
    assert all(s.kind == "elementwise" and list(s.shared_axes) == []
               for s in sd.inspect(rewritten))


def test_elementwise_as_spatial_trains_inside_the_graph(keras_exports: dict) -> None:
    """The CNN's Dense → Dropout site, written as SpatialDropout(shared_axes=[])."""
    model, export = _load(keras_exports, "cnn")
    rewritten = sd.rewrite(model, elementwise="spatial").model
    full_check(rewritten)
    assert count(rewritten, "Dropout") == 0 and count(rewritten, sd.OP_TYPE) == 2
    assert [s.kind for s in sd.inspect(rewritten)] == ["spatial", "elementwise"]
    training = session(rewritten)
    outputs = {run(training, _feeds(export, True))[0].tobytes() for _ in range(6)}
    assert len(outputs) > 1
    off = run(rewritten, _feeds(export, False))
    np.testing.assert_allclose(off[0], export.inference, rtol=1e-5, atol=1e-6)
    assert_same(run(sd.strip(rewritten).model, _feeds(export)), off)


def test_training_default_false(keras_exports: dict) -> None:
    model, export = _load(keras_exports, "conv2d_spatial2d_last")
    rewritten = sd.rewrite(model, training_default=False).model
    default = next(i for i in rewritten.graph.initializer if i.name == "training_mode")
    assert onnx.numpy_helper.to_array(default).item() is False
    np.testing.assert_allclose(run(rewritten, _feeds(export))[0], export.inference,
                               rtol=1e-5, atol=1e-6)
    # Rewriting again with the other default only flips the default.
    again = sd.rewrite(rewritten, training_default=True).model
    assert count(again, sd.OP_TYPE) == 1 and len(again.graph.node) == len(rewritten.graph.node)


@pytest.mark.parametrize("name", NEAR_MISS)
def test_near_miss_keras_layers_stay_unconverted(keras_exports: dict, name: str) -> None:
    model, _ = _load(keras_exports, name)
    sites = sd.inspect(model)
    assert [s.kind for s in sites] == ["unconvertible"]
    assert sites[0].reason
    rewritten, report = sd.rewrite(model)
    assert len(report.unconvertible) == 1 and not report.converted
    assert count(rewritten, sd.OP_TYPE) == 0 and count(rewritten, "Dropout") == 0
    _, strip_report = sd.strip(model)
    assert len(strip_report.unconvertible) == 1


def _initializer(model: onnx.ModelProto, name_part: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if name_part in i.name)


def test_near_miss_wrong_scale(keras_exports: dict) -> None:
    """The real SpatialDropout1D export with its 1/(1-rate) constant changed."""
    model, _ = _load(keras_exports, "spatial1d")
    scale = _initializer(model, "stateless_dropout/Const:0")
    scale.CopyFrom(onnx.numpy_helper.from_array(np.array(2.0, np.float32), scale.name))
    (site,) = sd.inspect(model)
    assert site.kind == "unconvertible"
    assert "not 1/(1-ratio)" in site.reason


def test_near_miss_threshold_not_constant(keras_exports: dict) -> None:
    """The real export with the rate turned into a graph input."""
    model, export = _load(keras_exports, "spatial1d")
    rate = _initializer(model, "GreaterEqual/y:0")
    model.graph.input.append(onnx.helper.make_tensor_value_info(rate.name, rate.data_type, []))
    (site,) = sd.inspect(model)
    assert site.kind == "unconvertible" and "not a constant" in site.reason
    assert export.expected_axes == [[1]]
