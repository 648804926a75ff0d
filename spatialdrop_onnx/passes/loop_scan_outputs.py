"""Loop scan outputs in a form onnx.reference stacks right too.

A ``Loop`` stacks the value a scan output has in each iteration on a new axis 0
(T iterations of a ``[B, C]`` value give ``[T, B, C]``: onnxruntime, OpenVINO, the
spec's ``user_defined_vals[i] = user_defined_val``). onnx.reference (1.23) joins
them with ``np.vstack``, which *concatenates* slices of rank 2 and more along
their own axis 0 (``[T·B, C]``) and turns scalars into ``[T, 1]``; only rank-1
slices come out right. tf2onnx's Keras GRU/LSTM loops emit the ``[B, units]``
state as a scan output, so the seed model failed three nodes later in onnx.reference
(``AxisError: axis 2 is out of bounds for array of dimension 2`` in Softmax).

The rewrite is valid ONNX that both readings of "concatenate" compute alike:
the body emits ``Unsqueeze(y, 0)`` (``[1, B, C]``: stacked ``[T, 1, B, C]``,
vstacked ``[T, B, C]``), and after the loop the stacked value is reshaped to
``[T, B, C]`` from its own shape — its first and last ``r`` dims (``r`` the
declared rank of ``y``)::

    s = Shape(out);  y_all = Reshape(out, Concat(s[0:1], s[-r:]))

Everything stays shape arithmetic onnxruntime's symbolic shape inference follows
(``mc`` proves batch folding with it). Scan outputs declared rank 1 are left
alone, and so are those this pass wrote (marked in their ``doc_string``: the
pass is idempotent); so are those of unknown rank, and loops in scopes of opset below 13
(``Unsqueeze`` with an axes input), which are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import NodeProto
from onnx import helper as oh

from ..graph import NameMaker
from ..graph.scopes import model_scopes
from .loop_layout import LoopLayout, loop_layout

#: doc_string of a body output this pass wrote: a second run leaves it alone.
MARK = "stacked explicitly by spatialdrop-onnx portable_loops"
#: ``Unsqueeze`` takes its axes as an input from opset 13; ``Reshape`` has allowzero from 14.
MIN_OPSET = 13
ALLOWZERO_OPSET = 14


@dataclass(frozen=True)
class ScanOutputReport:
    """Scan outputs rewritten, and those left as they were (loop path and why)."""

    stacked: int = 0
    left: tuple[str, ...] = ()


def _declared_rank(info: onnx.ValueInfoProto) -> int | None:
    tensor = info.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _const(name: str, values: list[int]) -> NodeProto:
    return oh.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(
        np.array(values, dtype=np.int64), name))


def _stack_explicitly(layout: LoopLayout, j: int, rank: int, fresh: NameMaker
                      ) -> list[NodeProto]:
    """Rewrite scan output ``j`` (of declared ``rank``); return the nodes after the loop."""
    node, body = layout.node, layout.body
    output = body.output[layout.body_out + layout.states + j]
    y = output.name
    slice_, axis0 = fresh(f"{y}__slice"), fresh(f"{y}__axis0")
    body.node.extend([_const(axis0, [0]), oh.make_node("Unsqueeze", [y, axis0], [slice_])])
    dims = [d for d in output.type.tensor_type.shape.dim]
    output.name = slice_
    output.doc_string = MARK
    del output.type.tensor_type.shape.dim[:]
    output.type.tensor_type.shape.dim.add().dim_value = 1
    output.type.tensor_type.shape.dim.extend(dims)

    at = layout.states + j
    stacked = node.output[at]
    raw = fresh(f"{stacked}__raw")
    node.output[at] = raw
    shape, lead, target = (fresh(f"{stacked}__shape"), fresh(f"{stacked}__iterations"),
                           fresh(f"{stacked}__target"))
    zero, one = fresh(f"{stacked}__zero"), fresh(f"{stacked}__one")
    after = [oh.make_node("Shape", [raw], [shape]), _const(zero, [0]), _const(one, [1]),
             oh.make_node("Slice", [shape, zero, one], [lead])]
    if rank:
        tail, start, end = (fresh(f"{stacked}__slice_shape"), fresh(f"{stacked}__tail_start"),
                            fresh(f"{stacked}__tail_end"))
        after += [_const(start, [-rank]), _const(end, [np.iinfo(np.int64).max]),
                  oh.make_node("Slice", [shape, start, end], [tail]),
                  oh.make_node("Concat", [lead, tail], [target], axis=0)]
    else:
        target = lead
    # A zero in the target is a real empty dim (no iteration), not "copy the input's".
    zero_is_zero = {"allowzero": 1} if layout.scope.opset >= ALLOWZERO_OPSET else {}
    after.append(oh.make_node("Reshape", [raw, target], [stacked], **zero_is_zero))
    return after


def stack_scan_outputs_explicitly(model: onnx.ModelProto, fresh: NameMaker
                                  ) -> ScanOutputReport:
    """Rewrite every Loop scan output not of rank 1 (see the module docstring), in place."""
    stacked = 0
    left: list[str] = []
    # Innermost scopes first: rebuilding a node list copies its nodes, so every body inside
    # them must be final by then.
    for scope in reversed(model_scopes(model, include_ours=True)):
        placed: list[NodeProto] = []
        changed = False
        for node in list(scope.nodes):  # type: ignore[call-overload]
            placed.append(node)
            layout = loop_layout(node, scope)
            if layout is None or not layout.is_loop:
                continue
            for j in range(layout.scan_outputs):
                output = layout.body.output[layout.body_out + layout.states + j]
                rank = _declared_rank(output)
                if rank == 1 or output.doc_string == MARK:
                    continue
                if rank is None or scope.opset < MIN_OPSET:
                    why = "rank unknown" if rank is None else f"opset {scope.opset}"
                    left.append(f"{layout.label()} ({output.name}: {why})")
                    continue
                placed += _stack_explicitly(layout, j, rank, fresh)
                stacked += 1
                changed = True
        if changed:
            del scope.nodes[:]  # type: ignore[attr-defined]
            scope.nodes.extend(placed)  # type: ignore[attr-defined]
    return ScanOutputReport(stacked, tuple(left))
