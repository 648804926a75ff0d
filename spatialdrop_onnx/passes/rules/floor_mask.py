"""Stochastic depth written as ``floor(keep + uniform)``: Keras ConvNeXt, old PyTorch drop_connect.

``keras.applications`` ConvNeXt's ``StochasticDepth`` layer and the PyTorch
``drop_connect``/``drop_path`` functions of many model zoos draw a keep
decision per sample by flooring ``keep + u`` (1 with probability ``keep``,
else 0) and scale the kept values by ``1/keep``::

    u     = StatelessRandomUniformV2(noise, key, counter, alg)   (tf2onnx, Keras)
          | RandomUniformLike(ConstantOfShape(noise))            (PyTorch dynamo)
          | RandomUniform(shape=noise)
          [ u * a + b ]                  optional affine map, must give U[0, 1)
    mask  = Floor(Add(keep, u))           keep a constant scalar, either operand

    out   = Mul(scaled, mask)             scaled = [Transpose<perm>](x * 1/keep | x / keep)
          | Mul(Mul(x, mask), 1/keep)  |  Div(Mul(x, mask), keep)
          | Mul(x, Mul(mask, 1/keep))  |  Mul(x, Div(mask, keep))

    (tf2onnx exports Keras' ``x / keep * mask`` as ``Mul(Mul(x, 1/keep), Floor(Add(keep,
    u)))``; PyTorch's ``x.div(keep) * (keep + rand).floor_()`` as ``Mul(Div(x, keep),
    Floor(Add(u, keep)))``.)

The site becomes ``SpatialDropout(x, ratio=1-keep)``; its shared axes come
from the noise shape (``(N, 1, 1, 1)``: every non-batch axis). When tf2onnx
put a layout ``Transpose`` between the scaled data and the mask, the noise
shape is in the transposed layout and the dropout is written before the
``Transpose``. The noise ``u`` is bound as a free value and traced back to its
random source in :meth:`FloorMask.analyse`, so ``Floor(0.5 + x)`` (rounding,
not dropout) is refused with a reason rather than matched.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ...graph import DEFAULT_DOMAINS
from ..shapes import Dim, WholeShape
from ._common import (
    Conversion,
    DropoutRule,
    NoMatch,
    RewriteContext,
    check_ratio,
    check_scale,
    close,
    float_data,
    layout_change,
    noise_of_tensor,
    seed_of,
    shared_axes,
    uniform_range,
)

#: Random ops a floor mask may draw from, all uniform.
UNIFORM_SOURCES = ("StatelessRandomUniformV2", "RandomUniform", "RandomUniformLike")
#: How the mask meets the data (see the module docstring).
FORMS = ("scaled_data", "scale_after", "scaled_mask")
#: Longest chain of affine ops (Add/Sub/Mul/Div by a constant) between the draw and the Add.
_MAX_AFFINE_STEPS = 8


class FloorMask(DropoutRule):
    """``x * floor(keep + u) / keep`` in one of the :data:`FORMS`, multiplying or dividing."""

    anchors = frozenset(UNIFORM_SOURCES)

    def __init__(self, ctx: RewriteContext, *, form: str, divides: bool) -> None:
        super().__init__(ctx, f"floor_mask_{form}" + ("" if form == "scaled_data" else
                                                      "_div" if divides else "_mul"))
        self.form = form
        self.divides = divides
        self.root_op = "Div" if form == "scale_after" and divides else "Mul"

    def _scale(self, op, value, factor):  # noqa: ANN001, ANN202
        return op.Div(value, factor) if self.divides else op.Mul(value, factor)

    def pattern(self, op, x, keep, noise, factor):  # noqa: ANN001
        mask = op.Floor(op.Add(keep, noise))
        if self.form == "scaled_data":
            return op.Mul(x, mask)  # x is the scaled data here, analysed below
        if self.form == "scale_after":
            return self._scale(op, op.Mul(x, mask), factor)
        return op.Mul(x, self._scale(op, mask, factor))

    def analyse(self, context: orp.MatchContext, x: ir.Value, keep: ir.Value,  # noqa: ANN001
                noise: ir.Value, factor: ir.Value | None = None,
                **_: object) -> Conversion:
        # Either Add operand may be the noise: decide by what it is, not by position.
        keep, noise, random_node, low, high = _split_sum(self.ctx, keep, noise)
        keep_value = self.ctx.shapes.scalar(keep)
        if keep_value is None:
            raise NoMatch(f"the value added to the noise ({keep.name!r}) is not a constant "
                          "scalar", random_node)
        if not (close(low, 0.0) and close(high, 1.0)):
            raise NoMatch(f"the noise added to the keep probability is uniform on "
                          f"[{low:g}, {high:g}), not [0, 1)", random_node)
        ratio = check_ratio(1.0 - keep_value, random_node)
        perm: list[int] | None = None
        scaled = x
        if self.form == "scaled_data":
            perm, x, multiplier, factor = _unscaled(self.ctx, scaled, random_node)
        else:
            value = self.ctx.shapes.scalar(factor)
            if value is None:
                raise NoMatch(f"the scale {factor.name!r} is not a constant scalar", random_node)
            if self.divides:
                if value == 0:
                    raise NoMatch("division by zero", random_node)
                value = 1.0 / value
            multiplier = value
        float_data(x)
        check_scale(multiplier, ratio, factor, random_node)
        elements = _noise_elements(self.ctx, random_node)
        if perm is not None:
            # The noise shape is written in the layout the mask multiplies; axis i of
            # the transposed tensor is axis perm[i] of x.
            layout_axes = shared_axes(self.ctx, elements, scaled, random_node)
            axes = sorted(perm[i] for i in layout_axes)
        else:
            axes = shared_axes(self.ctx, elements, x, random_node)
        return Conversion(
            name=context.root.name or "", rule=self.name, ratio=ratio, shared_axes=axes,
            graph=self.ctx.path_of(context.graph_or_function), data=x, perm=perm,
            seed=seed_of(random_node), random_op=random_node.op_type)


def _default_domain(node: ir.Node | None) -> bool:
    return node is not None and node.domain in DEFAULT_DOMAINS


def _split_sum(ctx: RewriteContext, a: ir.Value, b: ir.Value
               ) -> tuple[ir.Value, ir.Value, ir.Node, float, float]:
    """``(keep, noise, random node, low, high)`` for the operands of ``Add(a, b)``."""
    first: NoMatch | None = None
    for keep, noise in ((a, b), (b, a)):
        try:
            return (keep, noise, *_uniform_source(ctx, noise))
        except NoMatch as err:
            if err.random_node is not None:
                raise  # a draw, but not a usable one: that is the reason
            first = first or err
    assert first is not None
    raise first


def _uniform_source(ctx: RewriteContext, value: ir.Value) -> tuple[ir.Node, float, float]:
    """The uniform draw behind ``value`` and the range of ``value`` (through affine ops).

    ``value = a * u + b`` for a chain of Add/Sub/Mul/Div by constant scalars;
    the range is ``[a * low + b, a * high + b)`` for ``u ~ U[low, high)``.
    """
    scale, shift = 1.0, 0.0  # value = scale * current + shift
    current = value
    for _ in range(_MAX_AFFINE_STEPS + 1):
        node = current.producer()
        if not _default_domain(node):
            break
        if node.op_type in UNIFORM_SOURCES:
            low, high = (0.0, 1.0) if node.op_type == "StatelessRandomUniformV2" \
                else uniform_range(node)
            if scale <= 0:
                raise NoMatch(f"the noise is scaled by {scale:g}, not a positive factor", node)
            return node, scale * low + shift, scale * high + shift
        if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2:
            break
        a, b = node.inputs
        b_value = ctx.shapes.scalar(b)
        a_value = ctx.shapes.scalar(a) if node.op_type in ("Add", "Mul") else None
        if b_value is not None:
            current, constant = a, b_value
        elif a_value is not None:
            current, constant = b, a_value
        else:
            break
        if node.op_type == "Add":
            shift += scale * constant
        elif node.op_type == "Sub":
            shift -= scale * constant
        elif node.op_type == "Mul":
            scale *= constant
        else:
            if constant == 0:
                break
            scale /= constant
        if current is None:
            break
    raise NoMatch("the value added to the keep probability is not a uniform random draw")


def _unscaled(ctx: RewriteContext, scaled: ir.Value, random_node: ir.Node
              ) -> tuple[list[int] | None, ir.Value, float, ir.Value]:
    """``(perm, x, multiplier, factor)`` for ``scaled = [layout change<perm>](x * c | x / c)``."""
    perm = None
    node = scaled.producer()
    moved = layout_change(ctx, scaled, random_node)  # a Transpose or a layout-only Reshape
    if moved is not None:
        perm, inner = moved
        node = inner.producer()
    if not _default_domain(node) or node.op_type not in ("Mul", "Div") or \
            len(node.inputs) != 2 or None in node.inputs:
        raise NoMatch("the kept values are not a product x * 1/keep or a quotient x / keep",
                      random_node)
    a, b = node.inputs
    if node.op_type == "Div":
        value = ctx.shapes.scalar(b)
        if value is None or value == 0:
            raise NoMatch("the kept values are not divided by a constant", random_node)
        return perm, a, 1.0 / value, b
    for data, factor in ((a, b), (b, a)):
        value = ctx.shapes.scalar(factor)
        if value is not None:
            return perm, data, value, factor
    raise NoMatch("the kept values are not scaled by a constant", random_node)


def _noise_elements(ctx: RewriteContext, random_node: ir.Node) -> list[Dim] | WholeShape | None:
    """The noise-shape elements of the draw (see :mod:`..shapes`)."""
    if random_node.op_type == "RandomUniform":
        shape = random_node.attributes.get("shape")
        return list(shape.as_ints()) if shape is not None else None
    source = random_node.inputs[0] if random_node.inputs else None
    if source is None:
        return None
    if random_node.op_type == "RandomUniformLike":
        return noise_of_tensor(ctx, source)
    return ctx.shapes.shape_elements(source)


def rules(ctx: RewriteContext) -> list[FloorMask]:
    """Every floor-mask form; the scaled-data form analyses its scale itself."""
    found = [FloorMask(ctx, form="scaled_data", divides=False)]
    found += [FloorMask(ctx, form=f, divides=d) for f in FORMS[1:] for d in (False, True)]
    return found
