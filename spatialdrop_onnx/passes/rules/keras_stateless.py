"""Keras 3 dropout as tf2onnx writes it in training mode (stateless RNG).

Per dropout layer (SpatialDropout1D/2D/3D, ``Dropout``, ``Dropout(noise_shape=…)``)::

    scaled = Mul(x, 1/(1-rate))                      [Transpose(scaled) when tf2onnx
    u      = StatelessRandomUniformV2(noise, key, counter, alg)   changed the layout]
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
    DropoutRule,
    NoMatch,
    RewriteContext,
    SiteInfo,
    check_ratio,
    check_scale,
    constant,
    float_data,
    noise_and_axes,
)

RANDOM_OP = "StatelessRandomUniformV2"


class KerasStatelessDropout(DropoutRule):
    """tf2onnx's lowering of Keras 3 stateless dropout (maybe transposed, maybe affine)."""

    def __init__(self, ctx: RewriteContext, *, transposed: bool, affine: bool) -> None:
        suffix = ("_transposed" if transposed else "") + ("_affine" if affine else "")
        super().__init__(ctx, f"keras_stateless_dropout{suffix}")
        self.transposed = transposed
        self.affine = affine

    def pattern(self, op, x, scale, noise, key, counter, alg, rate, zero,  # noqa: ANN001
                u_scale, u_shift, perm):  # noqa: ANN001
        u = op.StatelessRandomUniformV2(noise, key, counter, alg, _outputs=["u"])
        if self.affine:
            u = op.Add(op.Mul(u, u_scale), u_shift)
        keep = op.GreaterOrEqual(u, rate)
        scaled = op.Mul(x, scale)
        if self.transposed:
            scaled = op.Transpose(scaled, perm=perm)
        kept = op.Mul(op.Cast(keep), scaled)
        dropped = op.Mul(zero, op.Cast(op.Not(keep)))
        return op.Add(kept, dropped)

    def analyse(self, context: orp.MatchContext, x: ir.Value, scale: ir.Value,  # noqa: ANN001
                noise: ir.Value, rate: ir.Value, zero: ir.Value, u: ir.Value,
                u_scale: ir.Value | None = None, u_shift: ir.Value | None = None,
                perm: ir.Attr | None = None, **_: object) -> SiteInfo:
        random_node = u.producer()
        float_data(x)
        threshold = constant(rate, "threshold", random_node)
        if self.affine:
            a = constant(u_scale, "uniform scale", random_node)
            b = constant(u_shift, "uniform offset", random_node)
            if a <= 0:
                raise NoMatch(f"uniform scale {a:g} is not positive", random_node)
            ratio = (threshold - b) / a
        else:
            ratio = threshold
        check_ratio(ratio, random_node)
        check_scale(constant(scale, "scale", random_node), ratio, scale, random_node)
        if constant(zero, "dropped value", random_node) != 0.0:
            raise NoMatch("dropped elements are not set to 0", random_node)
        noise_dims = self.ctx.shapes.shape_values(noise)
        order = None
        if self.transposed:
            order = list(perm.as_ints()) if perm is not None else None
            if order is None:
                raise NoMatch("Transpose without perm", random_node)
            layout_axes = noise_and_axes(self.ctx, noise_dims, _transposed_value(context),
                                         random_node)
            # Axis i of the transposed tensor is axis perm[i] of x.
            axes = sorted(order[i] for i in layout_axes)
        else:
            axes = noise_and_axes(self.ctx, noise_dims, x, random_node)
        return SiteInfo(
            name=context.root.name or "", rule=self.name, ratio=ratio, shared_axes=axes,
            graph=self.ctx.path_of(context.graph_or_function), data=x, perm=order,
            random_op=RANDOM_OP)


def _transposed_value(context: orp.MatchContext) -> ir.Value:
    """The Transpose output the mask multiplies (the layout the noise shape is written in)."""
    for node in context.nodes:
        if node.op_type == "Transpose":
            return node.outputs[0]
    raise NoMatch("no Transpose in the match")


def rules(ctx: RewriteContext) -> list[orp.RewriteRule]:
    """The Keras stateless-dropout rules, most specific first."""
    return [
        KerasStatelessDropout.rule(ctx, transposed=t, affine=a)
        for t in (True, False) for a in (True, False)
    ]
