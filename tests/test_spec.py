"""The op declaration: constants, axis resolution, ratio rules."""

import pytest

import spatialdrop_onnx as sd
from spatialdrop_onnx import spec


def test_public_constants():
    assert sd.OP_TYPE == "SpatialDropout"
    assert sd.OPSET_VERSION == 1
    assert sd.DOMAIN not in ("", "ai.onnx", "ai.onnx.contrib", "ai.onnx.ml")
    assert "." in sd.DOMAIN  # reverse-DNS


@pytest.mark.parametrize(("rank", "axes", "expected"), [
    (4, None, (2, 3)),          # default: channels-first spatial
    (2, None, ()),              # nothing spatial: elementwise
    (3, [-1], (2,)),
    (3, [1], (1,)),
    (5, [1, 2, 3, 4], (1, 2, 3, 4)),  # DropPath
    (3, [], ()),
    (4, [-2, 1], (1, 2)),
])
def test_resolve_shared_axes(rank, axes, expected):
    assert spec.resolve_shared_axes(rank, axes) == expected


@pytest.mark.parametrize(("rank", "axes", "message"), [
    (3, [3], "out of range"),
    (3, [-4], "out of range"),
    (3, [1, -2], "twice"),
    (0, None, "rank"),
])
def test_resolve_shared_axes_refuses(rank, axes, message):
    with pytest.raises(ValueError, match=message):
        spec.resolve_shared_axes(rank, axes)


@pytest.mark.parametrize("ratio", [-0.1, 1.0001, float("nan"), float("inf")])
def test_ratio_outside_unit_interval_refused(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        spec.check_ratio(ratio)


def test_noise_shape():
    assert spec.noise_shape((8, 3, 5, 7), None) == (8, 3, 1, 1)
    assert spec.noise_shape((8, 10, 16), [1]) == (8, 1, 16)


def _bfloat16_by_hand(value: float) -> float:
    """``value`` rounded to float, then to bfloat16 by nearest-even on the float's bits."""
    import struct

    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", rounded))[0]


@pytest.mark.parametrize("scale", [
    1 + 2.0 ** -8 + 2.0 ** -30,   # a bfloat16 tie once rounded to float: even, down
    1 + 2.0 ** -8 - 2.0 ** -30,   # below the tie either way
    1 + 3 * 2.0 ** -8 + 2.0 ** -30,  # a tie whose even neighbour is above
    1.25, 4 / 3, 10.0,
])
def test_bfloat16_scale_goes_through_float(scale):
    """The spec's bfloat16 scale is double -> float -> bfloat16, whatever the installed
    ml_dtypes does with a direct cast (0.7 rounds the double once)."""
    import ml_dtypes
    import numpy as np

    ratio = 1 - 1 / scale
    got = spec.kept_scale(ratio, np.dtype(ml_dtypes.bfloat16))
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    assert float(got) == _bfloat16_by_hand(1.0 / (1.0 - ratio))
