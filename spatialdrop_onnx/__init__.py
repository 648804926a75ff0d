"""spatialdrop-onnx: channel-wise (spatial) dropout for ONNX.

Layers, each depending only on those above it:
``spec`` (the op, declared once) → ``schema`` / ``reference`` / ``function_body``
/ ``inline`` → ``native`` (the ORT kernel in ``ops/``) → ``graph`` / ``sites``
(the shared protobuf vocabulary) → ``passes`` (rewrite, strip, inspect,
``monte_carlo``) → ``converters`` (Keras) and ``torch`` (PyTorch, imported only on
demand: ``from spatialdrop_onnx.torch import export``) → ``cli``.
"""

from . import reference
from ._version import __version__
from .function_body import make_portable
from .inline import InlineReport, inline
from .isolation import isolated_checks
from .native import get_library_path, register_kernel, session_options
from .passes import PassResult, RewriteReport, StripReport, inspect, rewrite, strip
from .passes.monte_carlo import MonteCarloReport, monte_carlo
from .schema import register_schema
from .sessions import inference_session
from .sites import Kind, Site
from .spec import DOMAIN, OP_TYPE, OPSET_VERSION, SpatialDropoutError

__all__ = [
    "DOMAIN",
    "InlineReport",
    "MonteCarloReport",
    "OPSET_VERSION",
    "OP_TYPE",
    "Kind",
    "PassResult",
    "RewriteReport",
    "Site",
    "SpatialDropoutError",
    "StripReport",
    "__version__",
    "get_library_path",
    "inference_session",
    "inline",
    "inspect",
    "isolated_checks",
    "make_portable",
    "monte_carlo",
    "reference",
    "register_schema",
    "rewrite",
    "register_kernel",
    "session_options",
    "strip",
]

register_schema()
