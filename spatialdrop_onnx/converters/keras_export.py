"""A traced Keras model → raw ONNX through tf2onnx, with the fixes real models need.

The trace is frozen here rather than by tf2onnx's ``from_function``, which
gets three things wrong on ``keras.applications`` models:

1. **Captured eager tensors.** Keras 3 keeps e.g. ``Normalization``'s mean and
   variance as plain eager tensors, which the trace captures. ``from_function``
   lists every capture as a graph input, so the ONNX model asks for inputs nobody
   can feed. Freezing (``convert_variables_to_constants_v2``) turns captures
   into constants; only the real arguments are passed on as inputs.
2. **Nested XLA functions.** Keras' TensorFlow backend runs grouped and
   depthwise ``Conv2D`` through a nested ``tf.function(jit_compile=True)``, whose
   ``_noinline``/``_XlaMustCompile`` attributes stop grappler from inlining it;
   tf2onnx then leaves a ``StatefulPartitionedCall``. The attributes are removed
   after freezing, so the call is inlined and its ``Conv2D`` converts (tf2onnx
   derives ``group`` from the kernel shape).
3. **Exact GELU** leaves TensorFlow ``Erfc`` ops: a tf2onnx handler writes
   ``1 - Erf(x)`` (:data:`CUSTOM_OP_HANDLERS`).

The frozen graph goes to tf2onnx's public ``from_graph_def``; inputs and
outputs keep the Keras names and the batch dimension is named ``batch``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..graph import iter_nodes
from .keras_layers import find_dropout_sites
from .keras_stack import DEFAULT_OPSET, KerasStack, import_keras_stack
from .keras_trace import TracedModel, trace_keras

#: dim_param given to the (dynamic) batch dimension of graph inputs and outputs.
BATCH_DIM = "batch"
#: Function and node attributes that keep grappler from inlining a function call.
NOINLINE_ATTRS = ("_noinline", "_XlaMustCompile", "_XlaCompile", "_XlaScope")


@dataclass
class RawExport:
    """A raw tf2onnx export and the trace it came from."""

    model: onnx.ModelProto
    scopes: dict[str, str]
    """TensorFlow name scope → Keras layer path (node names start with the scope)."""
    input_names: list[str]
    output_names: list[str]


# --- tf2onnx handler for Erfc -------------------------------------------------------


def _erfc_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """TensorFlow ``Erfc(x)`` → ONNX ``Sub(1, Erf(x))`` (tf2onnx custom op handler)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    node.type = "Erf"
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    sub = ctx.insert_new_node_on_output("Sub", node.output[0],
                                        name=utils.make_name(f"{name}_sub"))
    ctx.replace_inputs(sub, [one.output[0], node.output[0]])
    ctx.copy_shape(node.output[0], sub.output[0])
    ctx.set_dtype(sub.output[0], ctx.get_dtype(node.output[0]))


#: TensorFlow ops tf2onnx 1.17 has no handler for, with ours.
CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_handler, [])}


# --- Freezing -------------------------------------------------------------------------


def freeze(concrete: Any, stack: KerasStack) -> Any:
    """The concrete function as a frozen ``GraphDef``: variables and captures as constants.

    Traces that assign variables cannot be frozen the standard way
    (``incompatible with expected resource``): tf2onnx's own recovery is used
    then, as its ``from_function`` would.
    """
    from tf2onnx import tf_loader

    try:
        frozen = tf_loader.convert_variables_to_constants_v2(
            concrete, lower_control_flow=False, aggressive_inlining=True)
        graph_def = frozen.graph.as_graph_def(add_shapes=True)
    except ValueError as err:
        if "incompatible with expected resource" not in str(err):
            raise
        graph_def = tf_loader.fix_freezing_errors(
            tf_loader.convert_variables_to_constants_large_model(concrete))
    graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
    allow_inlining(graph_def)
    return graph_def


def allow_inlining(graph_def: Any) -> int:
    """Remove the attributes that stop grappler inlining nested (XLA) functions; count them."""
    removed = 0
    owners = [*graph_def.node, *graph_def.library.function,
              *(node for function in graph_def.library.function for node in function.node_def)]
    for owner in owners:
        for attr in NOINLINE_ATTRS:
            if attr in owner.attr:
                del owner.attr[attr]
                removed += 1
    return removed


def _real_inputs(concrete: Any, stack: KerasStack) -> list[str]:
    """Names of the function's own arguments (not its captures, not resources)."""
    captured = {internal.name for _, internal in concrete.graph.captures}
    return [t.name for t in concrete.inputs
            if t.dtype != stack.tf.resource and t.name not in captured]


# --- Export ---------------------------------------------------------------------------


def export_traced(traced: TracedModel, stack: KerasStack, opset: int = DEFAULT_OPSET
                  ) -> RawExport:
    """Freeze the trace and convert it with tf2onnx (see the module docstring).

    tf2onnx leaves ops it cannot convert in the graph as TensorFlow ops: see
    :func:`unconverted_nodes`.
    """
    concrete = traced.concrete_function()
    inputs = _real_inputs(concrete, stack)
    outputs = [t.name for t in concrete.outputs if t.dtype != stack.tf.resource]
    rename = dict(zip(inputs, traced.input_names, strict=True))
    if isinstance(concrete.structured_outputs, dict):
        rename.update({v.name: k for k, v in concrete.structured_outputs.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph_def = freeze(concrete, stack)
        onnx_model, _ = stack.tf2onnx.convert.from_graph_def(
            graph_def, name=concrete.name, input_names=inputs, output_names=outputs,
            opset=opset, custom_op_handlers=CUSTOM_OP_HANDLERS, tensors_to_rename=rename)
    _name_batch_dims(onnx_model, traced.input_names, traced.output_names)
    _order_outputs(onnx_model, traced.output_names)
    return RawExport(onnx_model, traced.scopes, traced.input_names, traced.output_names)


def _name_batch_dims(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Call the leading dynamic dimension of every graph input and output ``batch``."""
    wanted = set(inputs) | set(outputs)
    for info in [*model.graph.input, *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if info.name in wanted and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def _order_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Graph outputs in the Keras model's order (tf2onnx sorts dict outputs by key)."""
    by_name = {o.name: o for o in model.graph.output}
    if set(by_name) == set(names):
        ordered = [onnx.ValueInfoProto() for _ in names]
        for slot, name in zip(ordered, names, strict=True):
            slot.CopyFrom(by_name[name])
        del model.graph.output[:]
        model.graph.output.extend(ordered)


def unconverted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes in the default domain that are not ONNX operators (tf2onnx left them as TF ops)."""
    return [node for _, node in iter_nodes(model)
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)]


def export_keras_training_graph(model: Any, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Raw tf2onnx export of an in-memory Keras 3 model, dropout layers in training mode.

    Every dropout-family layer (found recursively) runs with ``training=True``,
    every other layer in inference mode; the batch dimension is dynamic. This is
    the exporter output the rewrite passes consume: it still holds TensorFlow's
    ``StatelessRandom*`` ops, so onnxruntime cannot run it as is.
    """
    stack = import_keras_stack()
    sites = find_dropout_sites(model, stack.keras)
    traced = trace_keras(model, stack, [s.layer for s in sites if s.kept_in_training])
    return export_traced(traced, stack, opset).model
