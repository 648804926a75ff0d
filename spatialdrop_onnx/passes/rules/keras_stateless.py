"""Keras 3 dropout as tf2onnx writes it in training mode (stateless RNG).

Per dropout layer (SpatialDropout1D/2D/3D, ``Dropout``, ``Dropout(noise_shape=…)``)::

    scaled = Mul(x, 1/(1-rate))                      [Transpose(scaled) when tf2onnx
    u      = StatelessRandomUniformV2(noise, key, counter, alg)    changed the layout]
             [u * (max-min) + min for plain Dropout]
    keep   = GreaterOrEqual(u, rate)
    out    = Add(Mul(Cast(keep), scaled), Mul(0, Cast(Not(keep))))   # lowered SelectV2

tf2onnx cannot convert ``StatelessRandomUniformV2`` (onnxruntime rejects the
model) and its key/counter were constant-folded, so the mask would never
change anyway. The site becomes ``SpatialDropout`` (shared axes from the noise
shape, in the layout of the tensor the mask multiplies) or ONNX ``Dropout``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ._common import (
    Conversion,
    DropoutRule,
    NoMatch,
    RewriteContext,
    check_ratio,
    check_scale,
    constant,
    float_data,
    shared_axes,
)

RANDOM_OP = "StatelessRandomUniformV2"


class KerasStatelessDropout(DropoutRule):
    """tf2onnx's lowering of Keras 3 stateless dropout (maybe transposed, maybe affine).

    The scaled tensor (``Mul(x, 1/(1-rate))``, maybe transposed) is bound as an
    input of the pattern, not matched as part of it: tf2onnx merges identical
    nodes, so two sites on one tensor with one rate (the two directions of a
    ``Bidirectional`` RNN, two dropout layers on one input) share that node. It
    is analysed here and removed afterwards if nothing else reads it.
    """

    def __init__(self, ctx: RewriteContext, *, affine: bool) -> None:
        super().__init__(ctx, "keras_stateless_dropout" + ("_affine" if affine else ""))
        self.affine = affine

    def pattern(self, op, scaled, noise, key, counter, alg, rate, zero,  # noqa: ANN001
                u_scale, u_shift):  # noqa: ANN001
        u = op.StatelessRandomUniformV2(noise, key, counter, alg, _outputs=["u"])
        if self.affine:
            u = op.Add(op.Mul(u, u_scale), u_shift)
        keep = op.GreaterOrEqual(u, rate)
        kept = op.Mul(op.Cast(keep), scaled)
        dropped = op.Mul(zero, op.Cast(op.Not(keep)))
        return op.Add(kept, dropped)

    def analyse(self, context: orp.MatchContext, scaled: ir.Value,  # noqa: ANN001
                noise: ir.Value, rate: ir.Value, zero: ir.Value, u: ir.Value,
                u_scale: ir.Value | None = None, u_shift: ir.Value | None = None,
                **_: object) -> Conversion:
        random_node = u.producer()
        threshold = constant(self.ctx, rate, "threshold", random_node)
        if self.affine:
            a = constant(self.ctx, u_scale, "uniform scale", random_node)
            b = constant(self.ctx, u_shift, "uniform offset", random_node)
            if a <= 0:
                raise NoMatch(f"uniform scale {a:g} is not positive", random_node)
            ratio = (threshold - b) / a
        else:
            ratio = threshold
        check_ratio(ratio, random_node)
        if constant(self.ctx, zero, "dropped value", random_node) != 0.0:
            raise NoMatch("dropped elements are not set to 0", random_node)
        order, x, scale = _unscaled(self.ctx, scaled, random_node)
        float_data(x)
        check_scale(constant(self.ctx, scale, "scale", random_node), ratio, scale, random_node)
        elements = self.ctx.shapes.shape_elements(noise)
        if order is not None:
            # The noise shape is written in the layout the mask multiplies.
            layout_axes = shared_axes(self.ctx, elements, scaled, random_node)
            # Axis i of the transposed tensor is axis perm[i] of x.
            axes = sorted(order[i] for i in layout_axes)
        else:
            axes = shared_axes(self.ctx, elements, x, random_node)
        return Conversion(
            name=context.root.name or "", rule=self.name, ratio=ratio, shared_axes=axes,
            graph=self.ctx.path_of(context.graph_or_function), data=x, perm=order,
            random_op=RANDOM_OP)


def _unscaled(ctx: RewriteContext, scaled: ir.Value, random_node: ir.Node | None
              ) -> tuple[list[int] | None, ir.Value, ir.Value]:
    """``(perm, x, scale)`` for ``scaled = [Transpose<perm>](Mul(x, scale))``."""
    order = None
    node = scaled.producer()
    if node is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        perm = node.attributes.get("perm")
        if perm is None:
            raise NoMatch("Transpose without perm", random_node)
        order = list(perm.as_ints())
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or \
            len(node.inputs) != 2:
        raise NoMatch("the kept values are not a product x * 1/(1-rate)", random_node)
    a, b = node.inputs
    if ctx.shapes.scalar(b) is not None:
        return order, a, b
    if ctx.shapes.scalar(a) is not None:
        return order, b, a
    raise NoMatch("the kept values are not scaled by a constant", random_node)


def rules(ctx: RewriteContext) -> list[orp.RewriteRule]:
    """The Keras stateless-dropout rules, most specific first."""
    return [KerasStatelessDropout.rule(ctx, affine=a) for a in (True, False)]
