"""PyTorch ``Dropout1d/2d/3d`` and DropPath as the dynamo exporter writes them in training mode.

``torch.onnx.export(model.train(), (x,), dynamo=True,
training=torch.onnx.TrainingMode.TRAINING)`` lowers ``bernoulli_`` to::

    u    = RandomUniformLike(ConstantOfShape(noise_shape))
    mask = Cast(Less(u, keep_prob))
    out  = Mul(x, Div(mask, keep_prob))        # nn.DropoutNd: divide first
    out  = Div(Mul(x, mask), keep_prob)        # DropPath: divide after

The noise shape is a constant with the batch size baked in (static export) or
``Concat(Shape(model_input)[0:1], [C], [1], …)`` (dynamic batch; note it reads
the *model input*, not the dropped tensor). Shared axes come from comparing
each noise dim with the data dim symbolically (``shapes.ShapeReasoner``).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ._common import (
    Conversion,
    DropoutRule,
    RewriteContext,
    check_scale,
    constant,
    float_data,
    keep_ratio_from_threshold,
    seed_of,
    shared_axes,
    uniform_range,
)


class TorchDynamoDropout(DropoutRule):
    """``RandomUniformLike(ConstantOfShape)`` → ``Less`` → ``Cast`` → scale → ``Mul``."""

    anchors = frozenset({"RandomUniformLike"})

    def __init__(self, ctx: RewriteContext, *, divide_after: bool) -> None:
        super().__init__(ctx, "torch_dynamo_droppath" if divide_after else
                         "torch_dynamo_dropout_nd")
        self.divide_after = divide_after
        self.root_op = "Div" if divide_after else "Mul"

    def pattern(self, op, x, noise, keep_prob, divisor):  # noqa: ANN001
        zeros = op.ConstantOfShape(noise)
        u = op.RandomUniformLike(zeros, _outputs=["u"])
        mask = op.Cast(op.Less(u, keep_prob))
        if self.divide_after:
            return op.Div(op.Mul(x, mask), divisor)
        return op.Mul(x, op.Div(mask, divisor))

    def analyse(self, context: orp.MatchContext, x: ir.Value, noise: ir.Value,  # noqa: ANN001
                keep_prob: ir.Value, divisor: ir.Value, u: ir.Value,
                **_: object) -> Conversion:
        random_node = u.producer()
        float_data(x)
        low, high = uniform_range(random_node)
        threshold = constant(self.ctx, keep_prob, "keep probability", random_node)
        ratio = keep_ratio_from_threshold(threshold, low, high, True, random_node)
        check_scale(1.0 / constant(self.ctx, divisor, "divisor", random_node), ratio, divisor,
                    random_node)
        axes = shared_axes(self.ctx, self.ctx.shapes.shape_elements(noise), x, random_node)
        return Conversion(
            name=context.root.name or "", rule=self.name, ratio=ratio, shared_axes=axes,
            graph=self.ctx.path_of(context.graph_or_function), data=x,
            seed=seed_of(random_node), random_op=random_node.op_type)


def rules(ctx: RewriteContext) -> list[TorchDynamoDropout]:
    """The PyTorch dynamo rules: divide before and after the multiply."""
    return [TorchDynamoDropout(ctx, divide_after=d) for d in (False, True)]
