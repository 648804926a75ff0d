"""The dynamo exporter path: ``torch.export`` (non-strict), then ``torch.onnx.export``.

Channel dropout is written as ``SpatialDropout`` by the exporter itself. A
custom translation for ``aten.feature_dropout`` is never called: the op is tagged
``maybe_aliasing_or_mutating``, so ``run_decompositions`` always decomposes it
into ``bernoulli`` + ``div`` + ``mul`` before the translation table is consulted
(docs/torch.md). So after ``torch.export`` each training-mode
``aten.feature_dropout`` node of the program (what ``F.dropout1d/2d/3d`` and
``torch.feature_dropout`` trace to, after torch's own rank handling) is pointed
at the custom op ``spatialdrop::channel_dropout``, which export keeps whole, and
the translation table maps that op to ``SpatialDropout(shared_axes=2..rank-1)``.

In-place channel dropout, stochastic depth (a ``bernoulli_`` mask multiplied
into a branch) and element-wise dropout keep the exporter's own form;
``rewrite`` converts them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch

from .. import spec
from ..graph import is_onnx_dropout, is_spatial_dropout, iter_nodes
from ._calls import Policy
from ._quiet import quiet_exporter
from ._tracing import dropout_training

#: The custom op traced channel dropout is pointed at (``namespace::name``).
CHANNEL_OP = "spatialdrop::channel_dropout"


@functools.cache
def channel_dropout_op() -> torch._ops.OpOverload:
    """The custom op ``spatialdrop::channel_dropout(x, p)``: ``torch.feature_dropout`` in training.

    Defined on first use (a process-wide registration in torch's op registry).
    """

    @torch.library.custom_op(CHANNEL_OP, mutates_args=())
    def channel_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
        return torch.feature_dropout(x, p, True)

    @channel_dropout.register_fake
    def _(x: torch.Tensor, p: float) -> torch.Tensor:
        return torch.empty_like(x)

    return torch.ops.spatialdrop.channel_dropout.default


#: Seeds the translations give each dropout node while torch's optimiser runs, so that
#: its common-subexpression pass cannot merge two sites on one tensor into one mask;
#: :func:`untag` removes them. Dropout nodes of a dynamo export only come from here.
TAG_BASE = 0x5D_0000_0000


def translation_table() -> dict[Any, Callable[..., Any]]:
    """Custom translations: the channel-dropout op and ``aten.native_dropout``.

    Each writes its dropout with a constant true flag (``rewrite`` rewires it to the
    graph's ``training_mode``) and a unique tag seed (see :data:`TAG_BASE`).
    """
    import onnx_ir as ir
    import onnxscript
    from onnxscript import opset18 as ops

    from ..schema import register_schema

    register_schema()  # onnxscript looks the op up in onnx's schema registry
    ours = onnxscript.values.Opset(spec.DOMAIN, spec.OPSET_VERSION)
    tags = itertools.count(TAG_BASE)

    def channel_dropout(x: Any, p: float) -> Any:  # noqa: ANN401 - exporter tensors
        """``SpatialDropout`` sharing every axis from 2 (the ATen layout is (N, C, ...))."""
        if x.shape is None:
            raise ValueError("channel dropout: the exporter does not know the input's rank")
        ratio = ops.Constant(value_float=float(p))
        flag = ops.Constant(value=ir.tensor(True))
        # The schema declares the optional mask output too; rewrite names it.
        outputs = ours.SpatialDropout(x, ratio, flag, shared_axes=list(range(2, len(x.shape))),
                                      seed=next(tags))
        return outputs[0]

    def native_dropout(input: Any, p: float, train: bool | None = True) -> Any:  # noqa: ANN401, A002
        """ONNX ``Dropout`` in training mode, as torch's translation writes it (output, mask)."""
        if train is False:  # never traced in practice: aten.dropout in eval is no native_dropout
            return ops.Identity(input), ops.ConstantOfShape(ops.Shape(input),
                                                            value=ir.tensor([True]))
        ratio = ops.Constant(value_float=float(p))
        flag = ops.Constant(value=ir.tensor(True))
        return ops.Dropout(input, ratio, flag, seed=next(tags))

    return {channel_dropout_op(): channel_dropout,
            torch.ops.aten.native_dropout.default: native_dropout}


def untag(model: onnx.ModelProto) -> int:
    """Remove the tag seeds :func:`translation_table` gave dropout nodes; how many."""
    removed = 0
    for _, node in iter_nodes(model):
        if not (is_spatial_dropout(node) or is_onnx_dropout(node)):
            continue
        for index, attribute in enumerate(node.attribute):
            if attribute.name == "seed" and attribute.i >= TAG_BASE:
                del node.attribute[index]
                removed += 1
                break
    return removed


def export_dynamo(module: torch.nn.Module, args: Sequence[Any], *, dynamic_batch: bool,
                  opset: int | None, train: frozenset[str], own: frozenset[str],
                  skip: frozenset[str]) -> onnx.ModelProto:
    """Trace with functional dropout forced (``skip``: modules left alone), export to ONNX.

    ``train``: modules traced in ``train()``; ``own``: modules traced with their
    own flag on (see :func:`~._tracing.dropout_training`).
    """
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    with quiet_exporter():
        with dropout_training(module, Policy(force=True, skip=skip), train=train - skip,
                              own=own - skip):
            program = torch.export.export(module, tuple(args), dynamic_shapes=dynamic_shapes,
                                          strict=False)
        route_channel_dropout(program)
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset,
                                         verbose=False,
                                         custom_translation_table=translation_table())
    model = onnx_program.model_proto
    untag(model)
    return model


def route_channel_dropout(program: torch.export.ExportedProgram) -> int:
    """Point training-mode ``aten.feature_dropout`` nodes at the channel-dropout op; how many."""
    target = torch.ops.aten.feature_dropout.default
    routed = 0
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or node.target is not target or node.kwargs:
            continue
        data, p, train = node.args
        if train is True and isinstance(p, (int, float)) and p > 0:
            node.target = channel_dropout_op()
            node.args = (data, float(p))
            routed += 1
    if routed:
        program.graph_module.recompile()
    return routed
