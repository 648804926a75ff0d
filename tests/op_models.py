"""Small ONNX models around one SpatialDropout node, and ways to run them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh

import spatialdrop_onnx as sd

ONNX_TYPES = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16,
}


def dropout_model(
    shape: Sequence[int | str],
    dtype: str = "float32",
    shared_axes: Sequence[int] | None = None,
    seed: int | None = None,
    with_mask: bool = True,
    opset: int = 18,
    io_as_float: bool = False,
) -> onnx.ModelProto:
    """x, ratio (double), training_mode → SpatialDropout → y[, mask].

    ``io_as_float`` wraps the node in Casts so bfloat16 can be fed from numpy
    float32 (onnxruntime's Python API has no bfloat16 arrays); the casts are
    exact for bfloat16-representable values.
    """
    elem = ONNX_TYPES[dtype]
    io_elem = TensorProto.FLOAT if io_as_float else elem
    attrs = {}
    if shared_axes is not None:
        attrs["shared_axes"] = oh.make_attribute("shared_axes", list(shared_axes),
                                                 attr_type=onnx.AttributeProto.INTS)
    if seed is not None:
        attrs["seed"] = oh.make_attribute("seed", seed)
    data_in = "x_t" if io_as_float else "x"
    out = "y_t" if io_as_float else "y"
    node = oh.make_node(sd.OP_TYPE, [data_in, "ratio", "training_mode"],
                        [out, "mask"] if with_mask else [out], domain=sd.DOMAIN)
    node.attribute.extend(attrs.values())
    nodes = [node]
    if io_as_float:
        nodes = [oh.make_node("Cast", ["x"], ["x_t"], to=elem), node,
                 oh.make_node("Cast", ["y_t"], ["y"], to=TensorProto.FLOAT)]
    rank = len(shape)
    axes = range(2, rank) if shared_axes is None else [a % rank for a in shared_axes]
    noise = [1 if i in axes else d for i, d in enumerate(shape)]
    outputs = [oh.make_tensor_value_info("y", io_elem, shape)]
    if with_mask:
        outputs.append(oh.make_tensor_value_info("mask", TensorProto.BOOL, noise))
    graph = oh.make_graph(nodes, "spatial_dropout", [
        oh.make_tensor_value_info("x", io_elem, shape),
        oh.make_tensor_value_info("ratio", TensorProto.DOUBLE, []),
        oh.make_tensor_value_info("training_mode", TensorProto.BOOL, []),
    ], outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset),
                                               oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])


def feeds(x: np.ndarray, ratio: float, training: bool) -> dict[str, np.ndarray]:
    return {"x": x, "ratio": np.array(ratio, np.float64), "training_mode": np.array(training)}


def ort_session(
    model: onnx.ModelProto, so: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                providers=["CPUExecutionProvider"])
