"""Noise shapes read from a tensor whose rank nobody knows.

In a raw tf2onnx export every unconverted TensorFlow random op makes the
tensors downstream of it shapeless, so a later site's noise shape is built
from ``Shape(t)`` of a tensor of unknown rank: permuted by tf2onnx's layout
change (``Gather(Shape(t), perm)``, EfficientNet's stochastic depth after a
conv) or sliced (``Shape(t)[0:1]``, any ``keras.ops.shape(x)[0]``). The dims
named there are ``t``'s own, so the shared axes follow without the rank. An
opaque custom op stands in for the unconverted op here.
"""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

import spatialdrop_onnx as sd

HEADER = '<ir_version: 8, opset_import: ["": 18, "test.opaque": 1]>'
CONSTS = ("<float k = {0.8}, float s = {1.25}, int64[1] zero = {0}, int64[1] one = {1}, "
          "int64[1] three = {3}, int64[1] four = {4}, int64[1] two = {2}, "
          "int64[4] perm = {0, 2, 3, 1}>")


def opaque_model(noise: str, data: str) -> onnx.ModelProto:
    """``t = Opaque(x)`` (rank unknown), a floor mask of ``noise`` times the scaled ``data``."""
    return onnx.parser.parse_model(f"""{HEADER}
        g (float[N,4,3,5] x) => (float y) {CONSTS} {{
            t = test.opaque.Opaque(x)
            ts = Mul(t, s)
            tt = Transpose<perm = [0, 2, 3, 1]>(ts)
            sh = Shape(t)
            permuted = Gather(sh, perm)
            {noise}
            z = ConstantOfShape(noise)
            u = RandomUniformLike(z)
            a = Add(k, u)
            m = Floor(a)
            y = Mul({data}, m)
        }}""")


CASES = [
    # tf2onnx's NHWC view of an NCHW tensor: (N, 1, 1, C) in NHWC shares H and W.
    ("gather_permuted_channels", """
            batch = Slice(permuted, zero, one)
            channels = Slice(permuted, three, four)
            noise = Concat<axis = 0>(batch, one, one, channels)""", "tt", [2, 3]),
    ("gather_permuted_per_sample", """
            batch = Slice(permuted, zero, one)
            noise = Concat<axis = 0>(batch, one, one, one)""", "tt", [1, 2, 3]),
    ("sliced_batch_and_channels", """
            batch = Slice(sh, zero, one)
            channels = Slice(sh, one, two)
            noise = Concat<axis = 0>(batch, channels, one, one)""", "ts", [2, 3]),
]


@pytest.mark.parametrize("name,noise,data,axes", CASES, ids=[c[0] for c in CASES])
def test_noise_shape_of_a_tensor_of_unknown_rank(name: str, noise: str, data: str,
                                                 axes: list[int]) -> None:
    (site,) = sd.inspect(opaque_model(noise, data))
    assert site.kind == "random-subgraph", site.reason
    assert list(site.shared_axes) == axes
    assert site.ratio == pytest.approx(0.2, rel=1e-6)


def test_a_negative_index_still_needs_the_rank() -> None:
    """``Gather(Shape(t), -1)`` names the last dim: unknowable without t's rank."""
    model = opaque_model("""
            batch = Slice(sh, zero, one)
            minus_one = Constant<value = int64[1] {-1}>()
            last = Gather(sh, minus_one)
            noise = Concat<axis = 0>(batch, one, one, last)""", "tt")
    (site,) = sd.inspect(model)
    assert site.kind == "unconvertible" and "noise shape" in site.reason
