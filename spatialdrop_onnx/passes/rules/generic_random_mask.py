"""The generic random-mask dropout: data times a thresholded uniform mask, scaled.

Any exporter (or hand-written graph) that computes::

    u    = RandomUniform(shape=…)  |  RandomUniformLike(t)        u ~ U[low, high)
    keep = u < t | t > u | u <= t | t >= u        (keep below the threshold)
         | u >= r | r <= u | u > r | r < u        (keep above it)
    out  = x * (Cast(keep) * s)  |  x * (Cast(keep) / k)
         | (x * Cast(keep)) * s  |  (x * Cast(keep)) / k
         | (x * s) * Cast(keep)  |  (x / k) * Cast(keep)
         | Where(keep, x * s | x / k, 0)

with constant threshold and ``s = 1/(1-ratio)`` (``k = 1-ratio``) is a dropout
site. The noise shape is ``shape`` or the shape of ``t``; every noise dim must
be 1 (shared) or provably equal to the data dim — worked out by shape
reasoning, never from names.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ._common import (
    Conversion,
    DropoutRule,
    NoMatch,
    RewriteContext,
    check_scale,
    constant,
    float_data,
    keep_ratio_from_threshold,
    noise_of_tensor,
    seed_of,
    shared_axes,
    uniform_range,
)

RANDOM_SOURCES = ("RandomUniform", "RandomUniformLike")
FORMS = ("mask_scaled", "scale_after", "scale_before", "where")


class GenericRandomMask(DropoutRule):
    """One application form (see module docstring), multiplying or dividing by the scale."""

    anchors = frozenset(RANDOM_SOURCES)

    def __init__(self, ctx: RewriteContext, *, form: str, divides: bool) -> None:
        super().__init__(ctx, f"generic_random_mask_{form}_{'div' if divides else 'mul'}")
        self.form = form
        self.divides = divides
        self.root_op = {"where": "Where", "scale_after": "Div" if divides else "Mul"}.get(
            form, "Mul")

    def _scale(self, op, value, factor):  # noqa: ANN001, ANN202
        return op.Div(value, factor) if self.divides else op.Mul(value, factor)

    def pattern(self, op, x, threshold, factor, zero, like):  # noqa: ANN001
        u = orp.OrValue([op.RandomUniform(), op.RandomUniformLike(like)])
        keep = orp.OrValue(
            [op.Less(u, threshold), op.Greater(threshold, u),
             op.LessOrEqual(u, threshold), op.GreaterOrEqual(threshold, u),
             op.GreaterOrEqual(u, threshold), op.LessOrEqual(threshold, u),
             op.Greater(u, threshold), op.Less(threshold, u)],
            tag_var="keep_below", tag_values=[True] * 4 + [False] * 4)
        if self.form == "where":
            return op.Where(keep, self._scale(op, x, factor), zero)
        mask = op.Cast(keep)
        if self.form == "mask_scaled":
            return op.Mul(x, self._scale(op, mask, factor))
        if self.form == "scale_after":
            return self._scale(op, op.Mul(x, mask), factor)
        return op.Mul(self._scale(op, x, factor), mask)

    def analyse(self, context: orp.MatchContext, x: ir.Value, threshold: ir.Value,  # noqa: ANN001
                factor: ir.Value, keep_below: bool, zero: ir.Value | None = None,
                like: ir.Value | None = None, **_: object) -> Conversion:
        random_node = next(n for n in context.nodes if n.op_type in RANDOM_SOURCES)
        float_data(x)
        low, high = uniform_range(random_node)
        threshold_value = constant(self.ctx, threshold, "threshold", random_node)
        ratio = keep_ratio_from_threshold(threshold_value, low, high, keep_below, random_node)
        value = constant(self.ctx, factor, "scale", random_node)
        if self.divides:
            if value == 0:
                raise NoMatch("division by zero", random_node)
            value = 1.0 / value
        check_scale(value, ratio, factor, random_node)
        if self.form == "where" and constant(self.ctx, zero, "dropped value", random_node) != 0.0:
            raise NoMatch("dropped elements are not set to 0", random_node)
        if random_node.op_type == "RandomUniform":
            shape = random_node.attributes.get("shape")
            noise = list(shape.as_ints()) if shape is not None else None
        else:
            assert like is not None
            noise = noise_of_tensor(self.ctx, like)
        axes = shared_axes(self.ctx, noise, x, random_node)
        return Conversion(
            name=context.root.name or "", rule=self.name, ratio=ratio, shared_axes=axes,
            graph=self.ctx.path_of(context.graph_or_function), data=x,
            seed=seed_of(random_node), random_op=random_node.op_type)


def rules(ctx: RewriteContext) -> list[GenericRandomMask]:
    """Every generic form, multiplying and dividing."""
    return [GenericRandomMask(ctx, form=f, divides=d) for f in FORMS for d in (False, True)]
