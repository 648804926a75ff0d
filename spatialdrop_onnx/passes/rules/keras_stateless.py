"""Keras 3 dropout as tf2onnx writes it in training mode (stateless RNG).

Per dropout layer (SpatialDropout1D/2D/3D, ``Dropout``, ``Dropout(noise_shape=…)``,
and the ``dropout`` / ``recurrent_dropout`` masks of GRU/LSTM)::

    scaled = Mul(x, 1/(1-rate))                      [Transpose(scaled), or a Reshape
    u      = StatelessRandomUniformV2(noise, key, counter, alg)    moving size-1 axes,
                                                     when tf2onnx changed the layout]
             [Add(Mul(u, max-min), min) for some draws]
    keep   = GreaterOrEqual(u, rate)
    out    = Add(Mul(Cast(keep), scaled), Mul(0, Cast(Not(keep))))   # lowered SelectV2

tf2onnx cannot convert ``StatelessRandomUniformV2`` (onnxruntime rejects the
model) and its key/counter were constant-folded, so the mask would never
change anyway. The site becomes ``SpatialDropout`` (shared axes from the noise
shape, in the layout of the tensor the mask multiplies) or ONNX ``Dropout``.

The pattern matches from ``keep`` down; everything above it is analysed, not
matched, because tf2onnx merges identical nodes: two sites on one tensor with
one rate (the two directions of a ``Bidirectional`` RNN, two dropout layers on
one input) share the scaled tensor and the noise shape. Such nodes are removed
afterwards only if nothing else reads them.

**RNN masks.** Keras builds each GRU/LSTM mask once per call as this dropout
applied to a tensor of ones (``ones_like(inputs[:, 0])`` / ``ones_like(state)``)
and feeds it to the ``Loop`` body. Such a site is written as
``SpatialDropout(ones, rate, training_mode, shared_axes=[])`` (rule
``keras_rnn_mask``): its portable body draws a fresh mask per run, and with
training off the mask is all ones. (An ONNX ``Dropout`` there would be removed
by onnxruntime's session optimiser whatever ``training_mode`` says.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ...graph import DEFAULT_DOMAINS
from ..shapes import small_tensor_values
from ._common import (
    Conversion,
    DropoutRule,
    NoMatch,
    RewriteContext,
    check_ratio,
    check_scale,
    constant,
    float_data,
    layout_change,
    shared_axes,
)

RANDOM_OP = "StatelessRandomUniformV2"
STATELESS_RULE = "keras_stateless_dropout"
RNN_MASK_RULE = "keras_rnn_mask"


class KerasStatelessDropout(DropoutRule):
    """tf2onnx's lowering of Keras 3 stateless dropout (and of Keras RNN masks)."""

    root_op = "Add"
    anchors = frozenset({RANDOM_OP})

    def __init__(self, ctx: RewriteContext) -> None:
        super().__init__(ctx, STATELESS_RULE)

    def pattern(self, op, u, rate, scaled, zero):  # noqa: ANN001
        keep = op.GreaterOrEqual(u, rate)
        kept = op.Mul(op.Cast(keep), scaled)
        dropped = op.Mul(zero, op.Cast(op.Not(keep)))
        return op.Add(kept, dropped)

    def analyse(self, context: orp.MatchContext, u: ir.Value, rate: ir.Value,  # noqa: ANN001
                scaled: ir.Value, zero: ir.Value, **_: object) -> Conversion:
        random_node, scale_a, shift_b = _uniform_source(self.ctx, u)
        threshold = constant(self.ctx, rate, "threshold", random_node)
        ratio = check_ratio((threshold - shift_b) / scale_a, random_node)
        if constant(self.ctx, zero, "dropped value", random_node) != 0.0:
            raise NoMatch("dropped elements are not set to 0", random_node)
        order, x, scale = _unscaled(self.ctx, scaled, random_node)
        float_data(x)
        check_scale(constant(self.ctx, scale, "scale", random_node), ratio, scale, random_node)
        elements = self.ctx.shapes.shape_elements(random_node.inputs[0])
        if order is not None:
            # The noise shape is written in the layout the mask multiplies.
            layout_axes = shared_axes(self.ctx, elements, scaled, random_node)
            # Axis i of the transposed tensor is axis perm[i] of x.
            axes = sorted(order[i] for i in layout_axes)
        else:
            axes = shared_axes(self.ctx, elements, x, random_node)
        rnn_mask = order is None and _is_ones(self.ctx, x)
        if rnn_mask and axes:
            raise NoMatch("an RNN mask with shared axes", random_node)
        return Conversion(
            name=context.root.name or "", rule=RNN_MASK_RULE if rnn_mask else STATELESS_RULE,
            ratio=ratio, shared_axes=axes, graph=self.ctx.path_of(context.graph_or_function),
            data=x, perm=order, random_op=RANDOM_OP, force_spatial=rnn_mask)


def _uniform_source(ctx: RewriteContext, u: ir.Value) -> tuple[ir.Node, float, float]:
    """``(random node, a, b)`` for ``u = a * StatelessRandomUniformV2(…) + b``."""
    node = u.producer()
    if node is not None and node.op_type == RANDOM_OP:
        return node, 1.0, 0.0
    if node is None or node.op_type != "Add" or node.domain not in DEFAULT_DOMAINS:
        raise NoMatch("the compared value is not a stateless uniform draw")
    for product, shift in (node.inputs, reversed(node.inputs)):
        inner = product.producer() if product is not None else None
        if inner is None or inner.op_type != "Mul" or len(inner.inputs) != 2:
            continue
        for draw, factor in (inner.inputs, reversed(inner.inputs)):
            random_node = draw.producer() if draw is not None else None
            if random_node is not None and random_node.op_type == RANDOM_OP:
                a = constant(ctx, factor, "uniform scale", random_node)
                b = constant(ctx, shift, "uniform offset", random_node)
                if a <= 0:
                    raise NoMatch(f"uniform scale {a:g} is not positive", random_node)
                return random_node, a, b
    raise NoMatch("the compared value is not a stateless uniform draw")


def _unscaled(ctx: RewriteContext, scaled: ir.Value, random_node: ir.Node | None
              ) -> tuple[list[int] | None, ir.Value, ir.Value]:
    """``(perm, x, scale)`` for ``scaled = [layout change<perm>](Mul(x, scale))``.

    The layout change is a ``Transpose`` or a ``Reshape`` that only moves size-1
    axes (:func:`._common.layout_change`).
    """
    order = None
    node = scaled.producer()
    moved = layout_change(ctx, scaled, random_node)
    if moved is not None:
        order, inner = moved
        node = inner.producer()
    if node is None or node.op_type != "Mul" or node.domain not in DEFAULT_DOMAINS or \
            len(node.inputs) != 2:
        raise NoMatch("the kept values are not a product x * 1/(1-rate)", random_node)
    a, b = node.inputs
    if ctx.shapes.scalar(b) is not None:
        return order, a, b
    if ctx.shapes.scalar(a) is not None:
        return order, b, a
    raise NoMatch("the kept values are not scaled by a constant", random_node)


def _is_ones(ctx: RewriteContext, value: ir.Value) -> bool:
    """A ``ConstantOfShape`` filled with 1, or a small constant of ones."""
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and \
            producer.domain in DEFAULT_DOMAINS:
        attr = producer.attributes.get("value")
        if attr is None:
            return False  # the default fill value is 0
        fill = small_tensor_values(attr.as_tensor())
        return fill is not None and fill.size == 1 and float(fill.reshape(())) == 1.0
    const = ctx.shapes.const(value)
    return const is not None and bool(np.all(const == 1))


def rules(ctx: RewriteContext) -> list[DropoutRule]:
    """The Keras stateless-dropout rule (RNN masks included)."""
    return [KerasStatelessDropout(ctx)]
