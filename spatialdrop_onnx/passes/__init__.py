"""Graph passes over ONNX models: rewrite exporter dropout, strip it, inspect it.

Each pass takes a ``ModelProto`` or the path of an ONNX file:

- :func:`rewrite` → ``PassResult(model, RewriteReport)``: the random-mask dropout
  real exporters write becomes ``SpatialDropout`` / ONNX ``Dropout`` reading one
  ``training_mode`` input (rules in :mod:`.rules`, on onnx_ir and the onnxscript
  rewriter);
- :func:`strip` → ``PassResult(model, StripReport)``: every dropout folded to the
  identity, for inference;
- :func:`inspect` → ``list[Site]``: every dropout site with its kind, ratio and
  shared axes.

``rewrite_file`` / ``strip_file`` / ``inspect_file`` load safely and save
atomically. Importing this package is cheap: onnx_ir and onnxscript are imported
only when a model has sites for the rules (strip of a model without random ops
never does).
"""

from __future__ import annotations

from .inspect_pass import inspect, inspect_file
from .result import PassResult
from .rewrite_pass import RewriteReport, rewrite, rewrite_file
from .strip_pass import StripReport, strip, strip_file

__all__ = [
    "PassResult",
    "RewriteReport",
    "StripReport",
    "inspect",
    "inspect_file",
    "rewrite",
    "rewrite_file",
    "strip",
    "strip_file",
]
