"""Keras GRU/LSTM ``dropout=`` / ``recurrent_dropout=`` masks, as tf2onnx writes them.

Keras builds each mask once per call as stateless dropout applied to a tensor
of ones (``ones_like(inputs[:, 0])`` / ``ones_like(state)``) and feeds it to
the ``Loop`` body, which multiplies it in at every time step::

    mask = Add(Mul(Cast(keep), Mul(ConstantOfShape(shape, 1), 1/(1-rate))),
               Mul(0, Cast(Not(keep))))         keep from StatelessRandomUniformV2

The mask is element-wise. The unconvertible ``StatelessRandomUniformV2`` (and
its constant-folded key, which would repeat the mask on every run) goes; the
mask becomes ``SpatialDropout(ones, rate, training_mode, shared_axes=[])``,
whose portable body draws it with ``RandomUniformLike``: valid, fresh per run,
obeying ``training_mode``; with training off the mask is all ones, so the
layer's dropout is the identity. (An ONNX ``Dropout`` here would be removed by
onnxruntime's session optimiser whatever ``training_mode`` says: its input is
computed and its output feeds the Loop.) The rule works the same when the
mask is built inside a ``Loop`` body (the rewriter visits subgraphs).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ._common import Conversion, NoMatch, RewriteContext
from .keras_stateless import KerasStatelessDropout


class KerasRnnMask(KerasStatelessDropout):
    """The Keras stateless dropout pattern applied to a tensor of ones (an RNN mask)."""

    # Its failures only say "not ones": the general Keras rule explains the site.
    explains_failures = False

    def __init__(self, ctx: RewriteContext, *, affine: bool) -> None:
        super().__init__(ctx, affine=affine)
        self.name = "keras_rnn_mask" + ("_affine" if affine else "")

    def analyse(self, context: orp.MatchContext, **bindings: object) -> Conversion:
        found = super().analyse(context, **bindings)
        if found.perm is not None or not _is_ones(self.ctx, found.data):
            raise NoMatch(f"{found.data.name!r} is not a tensor of ones")
        if found.shared_axes:
            raise NoMatch("an RNN mask with shared axes")
        found.force_spatial = True
        return found


def _is_ones(ctx: RewriteContext, value: ir.Value) -> bool:
    """A ``ConstantOfShape`` filled with 1, or a small constant of ones."""
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and \
            producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is None:
            return False  # the default fill value is 0
        fill = attr.as_tensor().numpy()
        return fill.size == 1 and float(fill.reshape(())) == 1.0
    const = ctx.shapes.const(value)
    return const is not None and bool(np.all(const == 1))


def rules(ctx: RewriteContext) -> list[orp.RewriteRule]:
    """The Keras RNN-mask rules (tried before the general Keras rule)."""
    return [KerasRnnMask.rule(ctx, affine=a) for a in (True, False)]
