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
