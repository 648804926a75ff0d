"""ONNX ``Dropout`` exported in training mode: give it the model's ``training_mode`` switch.

PyTorch exports ``nn.Dropout`` in training mode as ``Dropout(x, ratio, true)``
(TorchScript and dynamo alike): a constant ``training_mode`` that nothing can
turn off. The rule keeps the node (name, ratio, seed, mask output) and only
rewires its third input to the scope's ``training_mode`` value, so every
dropout of a rewritten model obeys one switch (``SpatialDropout`` nodes already in
the model get the same treatment). A ``Dropout`` reading a graph
input already (ours or the user's) is left alone. With ``elementwise="spatial"``
the node becomes ``SpatialDropout(shared_axes=[])`` instead (same outputs),
which onnxruntime does not optimise away.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ... import spec
from ...graph import TRAINING_MODE
from ...sites import Kind, Site
from ._common import RewriteContext


def _omittable(ratio: orp.Var) -> orp.Var:
    """The ``ratio`` variable, also matching an omitted ratio (``Dropout(x, "", true)``)."""
    return orp.Var(ratio.name, can_match_none=True)


class OnnxDropoutTrainingSwitch(orp.RewriteRuleClassBase):
    """``Dropout(x, ratio, <constant>)`` → ``Dropout(x, ratio, training_mode)``."""

    domains: tuple[str, ...] = ("", "ai.onnx")
    root_op = "Dropout"

    def __init__(self, ctx: RewriteContext, *, with_mask: bool) -> None:
        super().__init__(name="onnx_dropout_training_switch" + ("_mask" if with_mask else ""),
                         remove_nodes=True)
        self.ctx = ctx
        self.with_mask = with_mask
        self._graph: ir.Graph | ir.Function | None = None
        self._node: ir.Node | None = None

    @property
    def anchors(self) -> frozenset[str]:
        """The node itself anchors the rule."""
        return frozenset({self.root_op})

    def variants(self) -> list[orp.RewriteRule]:
        return [orp.RewriteRule(self.pattern, self.rewrite, self.check, name=self.name,
                                remove_nodes=True)]

    def pattern(self, op, x, ratio, flag):  # noqa: ANN001
        return op.Dropout(x, _omittable(ratio), flag, _outputs=2 if self.with_mask else 1)

    def check(self, context: orp.MatchContext, x: ir.Value, ratio: ir.Value | None,  # noqa: ANN001
              flag: ir.Value | None, **_: object) -> orp.MatchResult:
        result = orp.MatchResult()
        node = context.root
        if node.domain not in self.domains:
            return result.fail(f"domain {node.domain!r} is not {self.domains[0]!r}")
        if self.with_mask and len(node.outputs) < 2:
            return result.fail("the node has no mask output")
        if not self.with_mask and len(node.outputs) > 1 and node.outputs[1].uses():
            return result.fail("mask output is used (the two-output rule handles it)")
        if flag is None or flag.is_graph_input() or self.ctx.shapes.scalar(flag) is None:
            return result.fail("training_mode is absent or not a constant")
        self._graph = context.graph_or_function
        self._node = node
        self.ctx.dead_candidates.append(flag)
        return result

    def _record(self, node: ir.Node, ratio: ir.Value | None, kind: Kind) -> None:
        assert self._graph is not None
        value = spec.DEFAULT_RATIO if ratio is None else self.ctx.shapes.scalar(ratio)
        self.ctx.rewired.append(Site(
            name=node.name or node.outputs[0].name or "", kind=kind,
            graph=self.ctx.path_of(self._graph), op_type=node.op_type, ratio=value,
            training_mode=TRAINING_MODE))

    def rewrite(self, op, x: ir.Value, ratio: ir.Value | None, **_: object):  # noqa: ANN001, ANN201
        node = self._node
        assert node is not None and self._graph is not None
        self._record(node, ratio, Kind.ELEMENTWISE)
        training = self.ctx.training_for(self._graph)
        attrs = dict(node.attributes)
        outputs = 2 if self.with_mask else 1
        if self.ctx.elementwise == "spatial":
            if ratio is None:
                ratio = op.Constant(value=ir.tensor(np.array(spec.DEFAULT_RATIO, np.float32)))
            return op.op(spec.OP_TYPE, x, ratio, training, _domain=spec.DOMAIN,
                         _name=node.name, _outputs=outputs, **attrs,
                         **{spec.ATTR_SHARED_AXES: ir.AttrInt64s(spec.ATTR_SHARED_AXES, [])})
        return op.Dropout(x, ratio, training, _name=node.name, _outputs=outputs, **attrs)


class SpatialDropoutTrainingSwitch(OnnxDropoutTrainingSwitch):
    """``SpatialDropout(x, ratio, <constant>)`` → the same node reading ``training_mode``."""

    def __init__(self, ctx: RewriteContext, *, with_mask: bool) -> None:
        super().__init__(ctx, with_mask=with_mask)
        self.name = "spatial_dropout_training_switch" + ("_mask" if with_mask else "")

    def pattern(self, op, x, ratio, flag):  # noqa: ANN001
        return op.SpatialDropout(x, _omittable(ratio), flag, _domain=spec.DOMAIN,
                                 _outputs=2 if self.with_mask else 1)

    domains = (spec.DOMAIN,)
    root_op = spec.OP_TYPE

    def rewrite(self, op, x: ir.Value, ratio: ir.Value | None, **_: object):  # noqa: ANN001, ANN201
        node = self._node
        assert node is not None and self._graph is not None
        axes = node.attributes.get(spec.ATTR_SHARED_AXES)
        self._record(node, ratio, Kind.ELEMENTWISE if axes is not None and not list(
            axes.as_ints()) else Kind.SPATIAL)
        training = self.ctx.training_for(self._graph)
        return op.op(spec.OP_TYPE, x, ratio, training, _domain=spec.DOMAIN, _name=node.name,
                     _outputs=2 if self.with_mask else 1, **dict(node.attributes))


def rules(ctx: RewriteContext) -> list[OnnxDropoutTrainingSwitch]:
    """The training-switch rules for existing Dropout/SpatialDropout nodes (mask first)."""
    return [cls(ctx, with_mask=m)
            for cls in (OnnxDropoutTrainingSwitch, SpatialDropoutTrainingSwitch)
            for m in (True, False)]
