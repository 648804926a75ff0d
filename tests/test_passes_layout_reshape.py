"""A layout-only ``Reshape`` between the scaled data and the mask (tf2onnx, MobileNet v1 head).

When tf2onnx moves ``GlobalAveragePooling2D(keepdims=True)`` → ``Dropout`` → 1×1 ``Conv2D``
to NCHW, its optimiser writes the layout change ``Transpose<0,2,3,1>`` of an ``(N, C, 1, 1)``
tensor as ``Reshape(-1, 1, 1, C)``: the mask then multiplies a reshaped tensor. The rules look
through such a Reshape when it provably only moves size-1 axes, with the shared axes mapped
back to the data's layout; a Reshape that reorders or merges axes of other sizes is refused.
The model here is the raw export's structure written as ONNX text (``StatelessRandomUniformV2``
is tf2onnx's leftover TensorFlow op, so the raw model is not checked); the real Keras model is
in ``tests/test_keras_convert.py::test_mobilenet_head_dropout_is_kept``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction, assert_structurally_valid
from passes_helpers import count, flag, full_check, run, sample, session

import spatialdrop_onnx as sd

RATE = 0.3
#: x is (N, 6, 1, 5); the noise (in the reshaped layout) is shared over the size-6 axis.
X_SHAPE = ("N", 6, 1, 5)


def _export(target: list[int], noise_tail: list[int], allowzero: int = 0) -> onnx.ModelProto:
    """``y = dropout(Reshape(x * 1/(1-rate), target))`` as tf2onnx writes Keras' dropout.

    The noise shape (in y's layout) is the batch size read from ``x``, then ``noise_tail``.
    """
    text = f"""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 6, 1, 5] x) => (float[N, ?, ?, ?] y) {{
        scale = Constant<value = float {{{1 / (1 - RATE)!r}}}>()
        rate = Constant<value = float {{{RATE!r}}}>()
        zero = Constant<value = float {{0.0}}>()
        target = Constant<value = int64[4] {{{", ".join(map(str, target))}}}>()
        first = Constant<value = int64[1] {{0}}>()
        tail = Constant<value = int64[3] {{{", ".join(map(str, noise_tail))}}}>()
        key = Constant<value = int64[1] {{7}}>()
        counter = Constant<value = int64[2] {{0, 9}}>()
        alg = Constant<value = int32 {{3}}>()
        scaled = Mul(x, scale)
        moved = Reshape<allowzero = {allowzero}>(scaled, target)
        shape = Shape(x)
        batch = Gather(shape, first)
        noise = Concat<axis = 0>(batch, tail)
        u = StatelessRandomUniformV2(noise, key, counter, alg)
        keep = GreaterOrEqual(u, rate)
        keep_f = Cast<to = 1>(keep)
        kept = Mul(keep_f, moved)
        lose = Not(keep)
        lose_f = Cast<to = 1>(lose)
        dropped = Mul(zero, lose_f)
        y = Add(kept, dropped)
    }}"""
    return onnx.parser.parse_model(text)


#: (target, noise after the batch dim, y's axis of size 6 = the shared one)
LAYOUT_ONLY = {
    "size1_axis_moved_first": ([-1, 1, 6, 5], [1, 1, 5], [2]),
    "zero_copies_batch": ([0, 1, 6, 5], [1, 1, 5], [2]),
    "size1_axis_moved_last": ([-1, 6, 5, 1], [1, 5, 1], [1]),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ONLY))
def test_layout_only_reshape_is_looked_through(case: str) -> None:
    target, noise_tail, shared = LAYOUT_ONLY[case]
    rewritten, report = sd.rewrite(_export(target, noise_tail), training_default=False)
    full_check(rewritten)
    assert not report.unconvertible, [s.reason for s in report.unconvertible]
    (site,) = report.converted
    assert site.becomes == sd.OP_TYPE and list(site.shared_axes) == [1]  # x's size-6 axis
    assert count(rewritten, "StatelessRandomUniformV2") == 0
    assert count(rewritten, "Reshape") == 0  # replaced by the Transpose after the dropout
    x = sample((40, 6, 1, 5), seed=3)
    moved = x.reshape([x.shape[0] if t == -1 else (x.shape[i] if t == 0 else t)
                       for i, t in enumerate(target)])
    sess = session(rewritten)
    (inference,) = run(sess, {"x": x, "training_mode": flag(False)})
    np.testing.assert_array_equal(inference, moved)
    (training,) = run(sess, {"x": x, "training_mode": flag(True)})
    assert training.shape == moved.shape
    # In y's layout, one keep decision per (sample, position), shared over the size-6 axis.
    keep = assert_structurally_valid(moved, training, RATE, shared)
    assert_drop_fraction(keep, RATE)


@pytest.mark.parametrize("target", [[-1, 5, 1, 6], [-1, 30, 1, 1], [-1, 1, 5, 6]])
def test_reshape_that_moves_data_is_refused(target: list[int]) -> None:
    """Reordering or merging axes of other sizes is not a layout change: no guess."""
    rewritten, report = sd.rewrite(_export(target, [1, 1, 1]), training_default=False)
    assert not report.converted
    (site,) = report.unconvertible
    assert "not a product" in (site.reason or ""), site.reason
    assert count(rewritten, "StatelessRandomUniformV2") == 1


def test_reshape_with_allowzero_and_a_zero_is_refused() -> None:
    """``allowzero=1`` makes a 0 in the target a literal empty axis, not a copied dim."""
    _, report = sd.rewrite(_export([0, 1, 6, 5], [1, 1, 5], allowzero=1),
                           training_default=False)
    assert not report.converted and len(report.unconvertible) == 1
