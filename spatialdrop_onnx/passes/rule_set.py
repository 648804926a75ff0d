"""The dropout rewrite rules, indexed for anchored matching.

Every random-mask site contains a random op, and every existing dropout node is
one node: so matches are only tried near those *anchors* (rewrite_engine), and
only with the rules that can match there. The index maps an anchor op type to
its rules in order, each with the op type it ends at and its variants (every
operand order of the commutative ops). The order (most specific first):

1. ``rules.keras_stateless``: Keras 3 dropout layers and RNN masks through tf2onnx
2. ``rules.torch_dynamo``: PyTorch ``DropoutNd`` / DropPath through the dynamo exporter
3. ``rules.floor_mask``: stochastic depth as ``floor(keep + uniform)`` (Keras ConvNeXt,
   PyTorch drop_connect)
4. ``rules.generic_random_mask``: any thresholded-uniform mask with inverted scaling
5. ``rules.onnx_dropout``: an existing ``Dropout`` / ``SpatialDropout`` with a constant
   ``training_mode`` (anchored at the node itself)
"""

from __future__ import annotations

from onnxscript.rewriter import pattern as orp

from .rules import floor_mask, generic_random_mask, keras_stateless, onnx_dropout, torch_dynamo
from .rules._common import RewriteContext

RULE_MODULES = (keras_stateless, torch_dynamo, floor_mask, generic_random_mask, onnx_dropout)

#: anchor op type -> the rules it can anchor, in rule order: (root op type, variants).
RuleIndex = dict[str, list[tuple[str, list[orp.RewriteRule]]]]


def dropout_rules(ctx: RewriteContext) -> RuleIndex:
    """Every rule for one rewrite, indexed by the ops that anchor them, with the op they end at."""
    index: RuleIndex = {}
    for module in RULE_MODULES:
        for rule in module.rules(ctx):
            variants = rule.variants()
            for anchor in rule.anchors:
                index.setdefault(anchor, []).append((rule.root_op, variants))
    return index
