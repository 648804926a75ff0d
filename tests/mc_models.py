"""Small models the Monte-Carlo tests share (written as ONNX text)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

HEADER = '<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>'


def cnn(ratio: float, seed: int) -> onnx.ModelProto:
    """conv -> channel dropout (``ratio``) -> relu -> conv -> spatial mean -> softmax: the
    statistics of a non-linear function of the masks; weights drawn with ``seed``."""
    text = f"""{HEADER}
    g (float[B,3,6,6] x, bool training_mode) => (float[B,5] p)
      <float r = {{{ratio}}}, bool training_mode = {{0}}, int64[2] hw = {{2, 3}}> {{
        c = Conv<pads = [1, 1, 1, 1]>(x, w1)
        d = org.spatialdrop.SpatialDropout(c, r, training_mode)
        e = Relu(d)
        f = Conv(e, w2)
        g = ReduceMean<keepdims = 0>(f, hw)
        p = Softmax(g)
    }}"""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.5, (5, 8, 1, 1)).astype(np.float32), "w2")])
    onnx.checker.check_model(model, full_check=True)
    return model
