"""PyTorch → ONNX with channel-wise dropout kept and switchable.

The module is exported in eval mode except its dropout-family submodules,
which are put in train mode for the export so their random masks reach the
graph (BatchNorm and friends keep their inference form). The dynamo
exporter's anonymous random-mask subgraphs are then rewritten into
SpatialDropout / Dropout nodes that read one ``training_mode`` input.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import onnx

from ..errors import MissingDependency

if TYPE_CHECKING:  # torch is an optional extra
    import torch

#: Module class names treated as dropout: torch's own plus the usual DropPath names.
DROPOUT_MODULE_NAMES = frozenset({
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "DropPath", "StochasticDepth",
})


def _torch() -> Any:  # noqa: ANN401 - the torch module
    try:
        import torch
    except ImportError:
        raise MissingDependency(
            "PyTorch is not installed: pip install 'spatialdrop-onnx[torch]' "
            "(on this project's machines install torch==2.13.0 first)"
        ) from None
    return torch


def dropout_modules(module: torch.nn.Module,
                    names: frozenset[str] = DROPOUT_MODULE_NAMES) -> list[torch.nn.Module]:
    """Submodules (at any depth) whose class name marks them as dropout."""
    return [m for m in module.modules() if type(m).__name__ in names]


@contextlib.contextmanager
def _only_dropout_training(module: torch.nn.Module,
                           names: frozenset[str]) -> Iterator[list[torch.nn.Module]]:
    """Eval mode everywhere but the dropout modules; restores every flag afterwards."""
    saved = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        dropouts = dropout_modules(module, names)
        for m in dropouts:
            m.train()
        yield dropouts
    finally:
        for m, training in saved:
            m.training = training


def export(
    module: torch.nn.Module,
    args: Sequence[Any],
    *,
    dynamic_batch: bool = True,
    training_default: bool = False,
    dropout_names: frozenset[str] = DROPOUT_MODULE_NAMES,
    opset: int | None = None,
    verbose: bool = False,
) -> onnx.ModelProto:
    """Export ``module`` with its dropout kept, rewritten and switchable by ``training_mode``.

    ``args`` are example inputs (tensors). With ``dynamic_batch`` axis 0 of
    every tensor input is dynamic. The result is portable (function bodies
    attached) and defaults to inference (``training_default=False``).
    """
    torch = _torch()
    from ..passes import rewrite

    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    with _only_dropout_training(module, dropout_names), warnings.catch_warnings():
        # Training mode on the dropout modules is the point here, not a mistake.
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        log = io.StringIO()
        with contextlib.redirect_stdout(log) if not verbose else contextlib.nullcontext():
            program = torch.onnx.export(module, tuple(args), dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic_shapes, verbose=verbose)
    return rewrite(program.model_proto, training_default=training_default).model
