"""PyTorch → ONNX with channel-wise dropout kept: both exporters, one report.

- :func:`export` exports a module with every dropout kept and switchable by
  one boolean input ``training_mode`` (default false): eval mode everywhere
  else, functional dropout gated on a module's flag forced into the graph,
  channel dropout written as ``SpatialDropout`` by the exporter, stochastic
  depth (found by behaviour, whatever its class name) converted by
  :func:`spatialdrop_onnx.rewrite`, attention dropout kept on the attention
  probabilities; anything that cannot be converted is exported in eval form
  and reported (``TorchExportReport``).
- :func:`register_symbolics` teaches torch's TorchScript exporter
  (``dynamo=False``) to write ``nn.Dropout1d/2d/3d`` and ``F.dropout1d/2d/3d``
  in training mode as ``SpatialDropout``, and refuses alpha dropout clearly.

Needs PyTorch (``pip install 'spatialdrop-onnx[torch]'``); ``import spatialdrop_onnx``
alone never imports it. See docs/torch.md.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401 - the real torch (absolute import)
except ImportError:  # pragma: no cover - depends on the environment
    from ..errors import MissingDependency

    raise MissingDependency(
        "spatialdrop_onnx.torch needs PyTorch: pip install 'spatialdrop-onnx[torch]' "
        "(on this project's machines install torch==2.13.0 first)") from None

from ._calls import DropoutCall
from ._export import (
    STOCHASTIC_DEPTH_MODULES,
    LeftOut,
    TorchExportReport,
    TrainedModule,
    export,
)
from ._torchscript import register_symbolics

__all__ = [
    "STOCHASTIC_DEPTH_MODULES",
    "DropoutCall",
    "LeftOut",
    "TorchExportReport",
    "TrainedModule",
    "export",
    "register_symbolics",
]
