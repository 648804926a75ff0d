"""spatialdrop-onnx: channel-wise (spatial) dropout for ONNX.

Layers, each depending only on those above it:
``spec`` (the op, declared once) → ``schema`` / ``reference`` / ``function_body``
/ ``inlining`` → ``native`` (the ORT kernel in ``ops/``) → ``graph`` / ``sites``
(the shared protobuf vocabulary) → ``passes`` (rewrite, strip, inspect,
``monte_carlo``) → ``converters`` (Keras) and ``torch`` (PyTorch, imported only on
demand: ``from spatialdrop_onnx.torch import export``) → ``cli``.

The names below are imported on first use (PEP 562): ``import spatialdrop_onnx``
loads neither onnx nor onnxruntime, so the command line starts with what its
command needs, and an interrupt during start-up is answered in one line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

#: Public name -> the module (relative to this package) that defines it.
_EXPORTS = {
    "DOMAIN": "spec",
    "OPSET_VERSION": "spec",
    "OP_TYPE": "spec",
    "SpatialDropoutError": "spec",
    "InlineReport": "inlining",
    "inline": "inlining",
    "isolated_checks": "isolation",
    "make_portable": "function_body",
    "get_library_path": "native",
    "register_kernel": "native",
    "session_options": "native",
    "PassResult": "passes",
    "RewriteReport": "passes",
    "StripReport": "passes",
    "inspect": "passes",
    "rewrite": "passes",
    "strip": "passes",
    "MonteCarloReport": "passes.monte_carlo",
    "monte_carlo": "passes.monte_carlo",
    "register_schema": "schema",
    "inference_session": "sessions",
    "Kind": "sites",
    "Site": "sites",
}
#: Submodules that are part of the public surface themselves.
_MODULES = ("reference",)

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import reference
    from .function_body import make_portable
    from .inlining import InlineReport, inline
    from .isolation import isolated_checks
    from .native import get_library_path, register_kernel, session_options
    from .passes import PassResult, RewriteReport, StripReport, inspect, rewrite, strip
    from .passes.monte_carlo import MonteCarloReport, monte_carlo
    from .schema import register_schema
    from .sessions import inference_session
    from .sites import Kind, Site
    from .spec import DOMAIN, OP_TYPE, OPSET_VERSION, SpatialDropoutError
