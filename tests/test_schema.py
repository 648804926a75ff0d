"""The registered schema: checker and shape inference accept good models, refuse bad ones."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from op_models import dropout_model

import spatialdrop_onnx as sd
from spatialdrop_onnx import schema

# check_model(full_check=True) reports shape-inference failures as InferenceError.
CHECK_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _output_dims(model: onnx.ModelProto, name: str) -> list:
    for info in [*model.graph.output, *model.graph.value_info]:
        if info.name == name:
            return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
    raise KeyError(name)


def test_registration_is_idempotent():
    schema.register_schema()
    schema.register_schema()
    found = onnx.defs.get_schema(sd.OP_TYPE, sd.OPSET_VERSION, sd.DOMAIN)
    assert found.domain == sd.DOMAIN and set(found.attributes) == {"shared_axes", "seed"}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_checker_accepts_every_data_type(dtype):
    onnx.checker.check_model(dropout_model(["N", 3, 5, 5], dtype), full_check=True)


@pytest.mark.parametrize(("axes", "mask_dims"), [
    (None, ["N", 3, 1, 1]),
    ([1], ["N", 1, 5, "W"]),
    ([-1, 0], [1, 3, 5, 1]),
    ([], ["N", 3, 5, "W"]),
])
def test_shape_inference_keeps_symbolic_dims(axes, mask_dims):
    model = dropout_model(["N", 3, 5, "W"], "float32", axes)
    del model.graph.output[:]
    model.graph.output.append(oh.make_tensor_value_info("y", TensorProto.FLOAT, None))
    model.graph.output.append(oh.make_tensor_value_info("mask", TensorProto.BOOL, None))
    inferred = _infer(model)
    assert _output_dims(inferred, "y") == ["N", 3, 5, "W"]
    assert _output_dims(inferred, "mask") == mask_dims


@pytest.mark.parametrize(("axes", "message"), [([4], "out of range"), ([1, -3], "twice")])
def test_invalid_shared_axes_refused_even_without_mask(axes, message):
    model = dropout_model(["N", 3, 5, 5], "float32", axes, with_mask=False)
    with pytest.raises(onnx.shape_inference.InferenceError, match=message):
        _infer(model)
    with pytest.raises(CHECK_ERRORS, match=message):
        onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_constant_ratio_outside_unit_interval_refused(ratio):
    model = dropout_model([2, 3], "float32")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(ratio), "ratio"))
    with pytest.raises(onnx.shape_inference.InferenceError, match=r"ratio must be in \[0, 1\]"):
        _infer(model)


def test_rank_zero_refused():
    model = dropout_model([], "float32", shared_axes=[], with_mask=False)
    with pytest.raises(onnx.shape_inference.InferenceError, match="rank"):
        _infer(model)


def test_integer_data_refused_by_checker():
    model = dropout_model([2, 3], "float32")
    for info in (model.graph.input[0], model.graph.output[0]):
        info.type.tensor_type.elem_type = TensorProto.INT32
    with pytest.raises(CHECK_ERRORS, match="unsupported type: tensor.int32"):
        onnx.checker.check_model(model, full_check=True)
