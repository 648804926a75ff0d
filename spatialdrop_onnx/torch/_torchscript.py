"""The TorchScript exporter path (``torch.onnx.export(..., dynamo=False)``).

Without help it refuses ``aten::feature_dropout`` in training mode (the op
behind ``nn.Dropout1d/2d/3d`` and ``F.dropout1d/2d/3d``). :func:`register_symbolics`
maps it to ``SpatialDropout``; at the ATen level the input is always (N, C, ...)
(``F.dropout1d`` and ``F.dropout3d`` add the batch axis of unbatched input
before the call), so the shared axes are 2..rank-1. The training flag is a
constant: a symbolic cannot add a graph input (doing so corrupts the exporter's
input bookkeeping), so ``rewrite`` rewires every dropout to one
``training_mode`` input afterwards.
"""

from __future__ import annotations

import inspect
import io
import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch.onnx import symbolic_helper

from .. import spec
from ._calls import Policy
from ._quiet import quiet_exporter, set_domain_version
from ._tracing import dropout_training

#: The first default-domain opset the symbolics apply to (torch's own are registered at 9).
SYMBOLIC_OPSET = 9
CHANNEL_OPS = ("aten::feature_dropout", "aten::feature_dropout_")
ALPHA_OPS = ("aten::alpha_dropout", "aten::alpha_dropout_",
             "aten::feature_alpha_dropout", "aten::feature_alpha_dropout_")
#: The refusal, for raw TorchScript exports of alpha dropout in training mode.
ALPHA_MESSAGE = (
    "{op} in training mode cannot be exported with channel-wise dropout: alpha dropout keeps "
    "the mean and variance of SELU activations and has no SpatialDropout equivalent. Export "
    "the module in eval mode, or use spatialdrop_onnx.torch.export, which exports it in its "
    "eval form and reports it")


@symbolic_helper.parse_args("v", "f", "b")
def _channel_dropout(g: Any, data: Any, p: float, train: bool) -> Any:  # noqa: ANN401
    if not train or p == 0.0:
        return data
    rank = data.type().dim()
    if rank is None:
        raise torch.onnx.errors.SymbolicValueError(
            "feature_dropout: the tracer does not know the input's rank, so the shared axes of "
            "SpatialDropout cannot be worked out", data)
    ratio = g.op("Constant", value_t=torch.tensor(p, dtype=torch.float32))
    flag = g.op("Constant", value_t=torch.tensor(True))
    output = g.op(f"{spec.DOMAIN}::{spec.OP_TYPE}", data, ratio, flag,
                  shared_axes_i=list(range(2, rank)))
    output.setType(data.type())
    return output


def _refuse_alpha(op: str) -> Any:  # noqa: ANN401 - a symbolic function
    name = op.split("::")[1].rstrip("_")

    @symbolic_helper.parse_args("v", "f", "b")
    def symbolic(g: Any, data: Any, p: float, train: bool) -> Any:  # noqa: ANN401
        if train and p > 0.0:
            raise torch.onnx.errors.SymbolicValueError(ALPHA_MESSAGE.format(op=name), data)
        return data

    return symbolic


def register_symbolics() -> None:
    """Teach the TorchScript exporter channel dropout; refuse alpha dropout clearly.

    Afterwards ``torch.onnx.export(..., dynamo=False, training=TrainingMode.TRAINING)``
    writes ``nn.Dropout1d/2d/3d`` (batched or unbatched input), ``F.dropout1d/2d/3d``
    and ``torch.feature_dropout`` as ``org.spatialdrop::SpatialDropout`` sharing
    every axis from 2 (pass ``custom_opsets={"org.spatialdrop": 1}``). Its
    ``training_mode`` input is the constant true: run
    :func:`spatialdrop_onnx.rewrite` on the result to get one boolean graph input
    ``training_mode`` (default false) and the function bodies. ``alpha_dropout``
    and ``feature_alpha_dropout`` in training mode raise
    ``torch.onnx.errors.SymbolicValueError``. Calling it again changes nothing.
    """
    for op in CHANNEL_OPS:
        torch.onnx.register_custom_op_symbolic(op, _channel_dropout, SYMBOLIC_OPSET)
    for op in ALPHA_OPS:
        torch.onnx.register_custom_op_symbolic(op, _refuse_alpha(op), SYMBOLIC_OPSET)


def export_torchscript(module: torch.nn.Module, args: Sequence[Any], *, dynamic_batch: bool,
                       opset: int | None, train: frozenset[str], own: frozenset[str],
                       skip: frozenset[str]) -> onnx.ModelProto:
    """Trace with functional dropout forced (``skip``: modules left alone), export to ONNX.

    ``TrainingMode.PRESERVE`` keeps every module's flag as set: BatchNorm (in
    eval) is written in inference form, the forced dropout calls in training form.
    ``train``/``own``: as in :func:`~._tracing.dropout_training`.
    """
    register_symbolics()
    names = _input_names(module, args)
    dynamic_axes = {name: {0: "batch"} for name in names} if dynamic_batch and names else None
    buffer = io.BytesIO()
    with dropout_training(module, Policy(force=True, skip=skip), train=train - skip,
                          own=own - skip), quiet_exporter(), warnings.catch_warnings():
        # Dropout in training mode is the point here, and constant folding only
        # touches BatchNorm/Conv weights (BatchNorm is in eval mode).
        warnings.filterwarnings("ignore", message=".*training.?mode", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed",
                                category=DeprecationWarning)  # torch's own logging setup
        torch.onnx.export(module, tuple(args), buffer, dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=names,
                          dynamic_axes=dynamic_axes)
    # No custom_opsets: torch then prints "Custom opset domain ... is not used" for
    # every model without channel dropout; it imports the domain at version 1 when
    # a SpatialDropout is written, and this sets the version the spec declares.
    model = onnx.load_from_string(buffer.getvalue())
    set_domain_version(model, spec.DOMAIN, spec.OPSET_VERSION)
    return model


def _input_names(module: torch.nn.Module, args: Sequence[Any]) -> list[str] | None:
    """``forward``'s parameter names when every argument is a tensor (as dynamo names them)."""
    if not all(isinstance(a, torch.Tensor) for a in args):
        return None
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < len(args):
        return None
    return positional[:len(args)]
