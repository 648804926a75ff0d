"""The ordered set of dropout rewrite rules.

Rules are tried at each node in this order (most specific first):

1. ``rules.keras_rnn``: Keras GRU/LSTM masks (stateless dropout of a ones tensor)
2. ``rules.keras_stateless``: Keras 3 dropout layers through tf2onnx
3. ``rules.torch_dynamo``: PyTorch ``DropoutNd`` / DropPath through the dynamo exporter
4. ``rules.floor_mask``: stochastic depth as ``floor(keep + uniform)`` (Keras ConvNeXt,
   PyTorch drop_connect)
5. ``rules.generic_random_mask``: any thresholded-uniform mask with inverted scaling
6. ``rules.onnx_dropout``: an existing ONNX ``Dropout`` with a constant ``training_mode``
"""

from __future__ import annotations

from onnxscript.rewriter import pattern as orp

from .rules import (
    floor_mask,
    generic_random_mask,
    keras_rnn,
    keras_stateless,
    onnx_dropout,
    torch_dynamo,
)
from .rules._common import RewriteContext

RULE_MODULES = (keras_rnn, keras_stateless, torch_dynamo, floor_mask, generic_random_mask,
                onnx_dropout)


def dropout_rule_set(ctx: RewriteContext) -> orp.RewriteRuleSet:
    """All dropout rules for one rewrite, with commuted variants of Add/Mul patterns."""
    rules = [rule for module in RULE_MODULES for rule in module.rules(ctx)]
    return orp.RewriteRuleSet(rules, commute=True)
