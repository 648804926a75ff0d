"""Graph passes over ONNX models: rewrite exporter dropout, strip it, inspect it.

- :func:`rewrite`: turn the random-mask dropout real exporters write into
  ``SpatialDropout`` / ONNX ``Dropout`` reading one ``training_mode`` input
  (rules in :mod:`spatialdrop_onnx.passes.rules`, built on onnx_ir and the
  onnxscript rewriter).
- :func:`strip`: fold every dropout to the identity for inference.
- :func:`inspect`: list every dropout site with its kind, ratio and shared axes.

Importing this package is cheap: onnx_ir and onnxscript are imported only
when a pass that needs them runs (strip of a model without random ops never
does).
"""

from __future__ import annotations

from .inspect import inspect, inspect_path
from .rewrite import rewrite, rewrite_path
from .strip import StripReport, strip, strip_path, strip_with_report

__all__ = [
    "StripReport",
    "inspect",
    "inspect_path",
    "rewrite",
    "rewrite_path",
    "strip",
    "strip_path",
    "strip_with_report",
]
