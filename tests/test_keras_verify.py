"""The converter's numerical self-check: strict where the model is well conditioned, never
finer than the model's own conditioning (EfficientNetV2B0 with random weights on
standard-normal inputs: Keras' ``model(x)`` and ``model.predict(x)`` differ by 26 on outputs
of 4,000, and the plain tf2onnx export by 60 — the converted model was refused)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx.converters.keras_verify import (
    SENSITIVITY_FACTOR,
    VerificationMismatch,
    verify_against_keras,
)

#: sin(FAST * x) turns a one-ulp change of x into a change of ~0.1 in the output.
FAST = 1e6


def _onnx(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                 ["N", 1])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _const(name: str, value: float) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, TensorProto.FLOAT,
                                                                     [], [value]))


@pytest.fixture(scope="module")
def stack(keras: Any) -> Any:
    from spatialdrop_onnx.converters.keras_stack import import_keras_stack

    return import_keras_stack()


def _check(keras_model: Any, model: onnx.ModelProto, stack: Any) -> Any:
    from spatialdrop_onnx.converters.keras_trace import keras_input_specs

    return verify_against_keras(model, keras_model, keras_input_specs(keras_model, stack),
                                ["x"], stack)


def _times_two(keras: Any) -> Any:
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[2.0]], np.float32)])
    return model


def test_a_well_conditioned_model_is_checked_strictly(keras: Any, stack: Any) -> None:
    model = _times_two(keras)
    exact = _check(model, _onnx([_const("k", 2.0), oh.make_node("Mul", ["x", "k"], ["y"])]),
                   stack)
    assert exact.max_diff == 0.0 and exact.sensitivity == 0.0
    # 2.001x is off by ~1e-3: Keras barely moves under a one-ulp input change, so no widening.
    with pytest.raises(VerificationMismatch, match="differs from Keras"):
        _check(model, _onnx([_const("k", 2.001), oh.make_node("Mul", ["x", "k"], ["y"])]),
               stack)


def test_an_ill_conditioned_sample_widens_the_tolerance_to_the_models_own_movement(
        keras: Any, stack: Any) -> None:
    """sin(1e6 x): a one-ulp change of x moves the output by ~0.1. ONNX computes the product in
    double (Keras rounds it to float32 first): a different rounding, not a different model."""
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, use_bias=False)
    keras_model = keras.Model(inputs, keras.layers.Lambda(keras.ops.sin)(dense(inputs)))
    dense.set_weights([np.array([[FAST]], np.float32)])
    double = oh.make_tensor("k", TensorProto.DOUBLE, [], [FAST])
    model = _onnx([oh.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE),
                   oh.make_node("Constant", [], ["k"], value=double),
                   oh.make_node("Mul", ["xd", "k"], ["p"]), oh.make_node("Sin", ["p"], ["s"]),
                   oh.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)])
    check = _check(keras_model, model, stack)
    assert check.sensitivity > 1e-3  # measured, as the plain tolerance was exceeded
    assert 1e-4 < check.max_diff <= SENSITIVITY_FACTOR * check.sensitivity
    # A wrong model on the same sample is still refused: sin(1e6 x) + 0.5.
    shifted = _onnx([*model.graph.node[:-1], oh.make_node("Cast", ["s"], ["f"],
                                                          to=TensorProto.FLOAT),
                     _const("half", 0.5), oh.make_node("Add", ["f", "half"], ["y"])])
    with pytest.raises(VerificationMismatch, match="differs from Keras"):
        _check(keras_model, shifted, stack)
