"""Keras 3 → raw ONNX through tf2onnx, with only the dropout-family layers in training mode.

tf2onnx's ``from_keras`` reads Keras-2 attributes and fails on Keras 3, so the
model is wrapped in a ``tf.function`` and converted with ``from_function``.
The model is called with ``training=False`` (BatchNormalization and every other
layer in inference form), while each dropout-family layer's ``call`` is
temporarily replaced by a wrapper that forces ``training=True``: its random
subgraph survives into the export for the rewrite passes to turn into
SpatialDropout / ONNX Dropout / standard random ops.

The wrappers also record the TensorFlow name scope each layer ran under, so a
node tf2onnx could not convert can be traced back to the Keras layer that made it.

Nothing here touches files: loading lives in ``keras_convert``. TensorFlow,
Keras and tf2onnx are imported lazily (they are the optional ``[keras]`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import onnx

from ..errors import MissingDependency, UserError
from ..graph import iter_nodes

#: The pip extra that brings TensorFlow, Keras and tf2onnx.
KERAS_EXTRA = "spatialdrop-onnx[keras]"
#: Default-domain opsets accepted: the function body needs 15, tf2onnx 1.17 knows up to 18.
MIN_OPSET = 15
MAX_OPSET = 18
DEFAULT_OPSET = 17
#: dim_param given to the (dynamic) batch dimension of graph inputs and outputs.
BATCH_DIM = "batch"

# Site kinds: how Keras implements the layer in training mode.
SPATIAL = "spatial_dropout"            # SpatialDropout1D/2D/3D
NOISE_SHAPE = "dropout_noise_shape"    # Dropout(noise_shape=...)
DROPOUT = "dropout"                    # plain element-wise Dropout
GAUSSIAN_DROPOUT = "gaussian_dropout"  # multiplicative N(1, rate/(1-rate)) noise
GAUSSIAN_NOISE = "gaussian_noise"      # additive N(0, stddev) noise
ALPHA_DROPOUT = "alpha_dropout"        # SELU-preserving dropout
RNN = "rnn_dropout"                    # GRU/LSTM/SimpleRNN/ConvLSTM dropout masks


@dataclass
class DropoutSite:
    """One dropout-family layer found in a Keras model (possibly nested in another layer)."""

    path: str
    """Layer path from the model, e.g. ``tcn/residual_block_0/spatial_dropout1d``."""
    layer_class: str
    kind: str
    rate: float
    """Dropout rate (for GaussianNoise: the noise stddev; for RNNs: the input dropout)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts: ``shared_axes`` (Keras layout), ``data_format``,
    ``noise_shape``, ``recurrent_dropout``."""
    scopes: list[str] = field(default_factory=list)
    """TensorFlow name scopes the layer's ``call`` ran under while tracing."""
    layer: Any = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        """Whether the layer draws any random numbers in training mode."""
        return self.rate > 0 or self.details.get("recurrent_dropout", 0) > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (without the layer object and scopes)."""
        return {"path": self.path, "layer_class": self.layer_class, "kind": self.kind,
                "rate": self.rate, **self.details}


# --- Optional dependencies --------------------------------------------------


@dataclass(frozen=True)
class KerasStack:
    """The lazily imported optional modules."""

    tf: ModuleType
    keras: ModuleType
    tf2onnx: ModuleType


def import_keras_stack() -> KerasStack:
    """Import TensorFlow, Keras 3 and tf2onnx quietly, or raise a UserError naming the extra."""
    # TensorFlow's C++ logging is read once, at import: set it before.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
        import tensorflow as tf
        import tf2onnx
    except ImportError as err:
        raise MissingDependency(
            f"converting Keras models needs TensorFlow, Keras 3 and tf2onnx ({err}); "
            f"install them with: pip install '{KERAS_EXTRA}'"
        ) from None
    if not keras.__version__.startswith("3."):
        raise UserError(f"Keras 3 is required, found Keras {keras.__version__}")
    tf.get_logger().setLevel(logging.ERROR)
    # tf2onnx logs every unsupported op (ERROR) and freezing retry (WARNING);
    # the converter reports what matters itself.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return KerasStack(tf=tf, keras=keras, tf2onnx=tf2onnx)


# --- Finding dropout layers ---------------------------------------------------


def iter_sublayers(model: Any) -> Iterator[tuple[str, Any]]:
    """Every layer inside ``model``, breadth first, as ``(path, layer)``; each layer once.

    Keras 3 tracks the sub-layers of any layer (functional, sequential or a
    custom layer holding layers in attributes or lists) in ``_layers``; there is
    no public recursive accessor. Breadth first gives each layer its shortest path.
    """
    seen = {id(model)}
    queue: list[tuple[str, Any]] = [("", model)]
    while queue:
        prefix, parent = queue.pop(0)
        for child in getattr(parent, "_layers", None) or ():
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield path, child
            queue.append((path, child))


def _spatial_axes(layer: Any, rank: int) -> list[int]:
    """Shared axes of a SpatialDropoutND in the layer's own layout (batch axis 0)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return list(range(2, rank))
    return list(range(1, rank - 1))


def classify_layer(layer: Any, keras: ModuleType) -> tuple[str, float, dict[str, Any]] | None:
    """``(kind, rate, details)`` for a dropout-family layer, None for any other layer."""
    layers = keras.layers
    spatial_ranks = {layers.SpatialDropout1D: 3, layers.SpatialDropout2D: 4,
                     layers.SpatialDropout3D: 5}
    for cls, rank in spatial_ranks.items():
        if isinstance(layer, cls):
            details = {"shared_axes": _spatial_axes(layer, rank)}
            if hasattr(layer, "data_format"):
                details["data_format"] = layer.data_format
            return SPATIAL, float(layer.rate), details
    if isinstance(layer, layers.Dropout):
        if layer.noise_shape is not None:
            shape = [None if d is None else int(d) for d in layer.noise_shape]
            shared = [i for i, d in enumerate(shape) if d == 1]
            return NOISE_SHAPE, float(layer.rate), {"noise_shape": shape, "shared_axes": shared}
        return DROPOUT, float(layer.rate), {}
    if isinstance(layer, layers.GaussianDropout):
        return GAUSSIAN_DROPOUT, float(layer.rate), {}
    if isinstance(layer, layers.GaussianNoise):
        return GAUSSIAN_NOISE, float(layer.stddev), {}
    if isinstance(layer, layers.AlphaDropout):
        details = {}
        if layer.noise_shape is not None:
            details["noise_shape"] = [None if d is None else int(d) for d in layer.noise_shape]
        return ALPHA_DROPOUT, float(layer.rate), details
    if isinstance(layer, layers.RNN):
        cells = getattr(layer.cell, "cells", None) or [layer.cell]  # StackedRNNCells
        rates = [float(getattr(c, "dropout", 0.0) or 0.0) for c in cells]
        recurrent = [float(getattr(c, "recurrent_dropout", 0.0) or 0.0) for c in cells]
        if max(rates) > 0 or max(recurrent) > 0:
            return RNN, max(rates), {"recurrent_dropout": max(recurrent)}
    return None


def find_dropout_sites(model: Any, keras: ModuleType | None = None) -> list[DropoutSite]:
    """All dropout-family layers in ``model``, including those nested in other layers.

    RNN layers count when their cell has ``dropout`` or ``recurrent_dropout``;
    the cell itself is not listed separately (the RNN layer drives it).
    """
    if keras is None:
        keras = import_keras_stack().keras
    sites = []
    for path, layer in iter_sublayers(model):
        found = classify_layer(layer, keras)
        if found is not None:
            kind, rate, details = found
            sites.append(DropoutSite(path=path, layer_class=type(layer).__name__, kind=kind,
                                     rate=rate, details=details, layer=layer))
    return sites


# --- Tracing -------------------------------------------------------------------


@contextlib.contextmanager
def _instrumented_calls(
    tf: ModuleType,
    layers: Sequence[tuple[str, Any]],
    forced: set[int],
    scopes: dict[str, str],
) -> Iterator[None]:
    """Wrap each layer's ``call``: record its name scope; force ``training=True`` if in ``forced``.

    ``Layer.__call__`` looks ``self.call`` up on the instance at every call, so an
    instance attribute overrides the method for this model only; it is removed
    afterwards (``object`` methods bypass Keras' attribute tracking).
    """
    patched = []

    def wrap(original: Callable, path: str, force: bool) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            if force:
                kwargs["training"] = True
            if scopes.setdefault(tf.get_current_name_scope(), path) == path:
                return original(*args, **kwargs)
            # Called through ``.call`` by its parent (e.g. TimeDistributed), so it
            # shares the parent's scope: give its ops a scope of their own.
            with tf.name_scope(path.rpartition("/")[2]):
                scopes.setdefault(tf.get_current_name_scope(), path)
                return original(*args, **kwargs)
        return call

    try:
        for path, layer in layers:
            own = vars(layer).get("call")  # a call already set on the instance, if any
            object.__setattr__(layer, "call", wrap(layer.call, path, id(layer) in forced))
            patched.append((layer, own))
        yield
    finally:
        for layer, own in patched:
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)
            # RNN cells cache their masks; never leave a graph tensor behind.
            for method in ("reset_dropout_mask", "reset_recurrent_dropout_mask"):
                if callable(getattr(layer, method, None)):
                    getattr(layer, method)()


def _tf_name(name: str, fallback: str) -> str:
    """A valid TensorFlow op name derived from a Keras tensor or layer name."""
    clean = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name or "")
    return clean if re.match(r"[A-Za-z0-9.]", clean) else fallback


def _output_names(model: Any, count: int) -> list[str]:
    """Functional models' output names; a Sequential's last layer; else ``output_i``."""
    names = list(getattr(model, "output_names", None) or [])
    layers = getattr(model, "layers", None) or []
    if not names and count == 1 and layers:
        names = [layers[-1].name]
    if len(names) != count or len(set(names)) != count:
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return [_tf_name(n, f"output_{i}") for i, n in enumerate(names)]


def _input_name(tensor: Any, index: int) -> str:
    """The ``keras.Input(name=…)`` of a model input (Sequential tensors carry generated names)."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None)
    name = getattr(layer, "name", None) or getattr(tensor, "name", "")
    return _tf_name(name, f"input_{index}")


@dataclass
class TracedModel:
    """A traced ``tf.function`` ready for tf2onnx, and what the trace learnt."""

    function: Any
    specs: list[Any]
    """``tf.TensorSpec`` per input; their names become the ONNX input names."""
    output_names: list[str]
    scopes: dict[str, str] = field(default_factory=dict)
    """TensorFlow name scope → Keras layer path, for every layer that ran."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]


@dataclass
class TraceResult:
    """A raw tf2onnx export and the trace it came from."""

    model: onnx.ModelProto
    scopes: dict[str, str]
    input_names: list[str]
    output_names: list[str]


def keras_input_specs(model: Any, stack: KerasStack) -> list[Any]:
    """One named ``tf.TensorSpec`` per model input (Keras names, made valid for TensorFlow)."""
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise UserError("the model has no known inputs (build it with keras.Input before saving)")
    tf = stack.tf
    specs = [tf.TensorSpec(shape=tuple(t.shape), dtype=t.dtype, name=_input_name(t, i))
             for i, t in enumerate(inputs)]
    if len({s.name for s in specs}) != len(specs):
        specs = [tf.TensorSpec(s.shape, s.dtype, name=f"input_{i}") for i, s in enumerate(specs)]
    return specs


def trace_keras(model: Any, stack: KerasStack, training_layers: Sequence[Any] = ()) -> TracedModel:
    """Trace ``model(x, training=False)`` with only ``training_layers`` forced to training mode."""
    keras = stack.keras
    specs = keras_input_specs(model, stack)
    out_names: list[str] = []  # known once the model has run (Sequential has no .output)

    def forward(*args: Any) -> dict[str, Any]:
        # One input: the tensor itself (Sequential models take nothing else);
        # several: the functional model's own input structure (list or dict).
        packed = args[0] if len(args) == 1 else keras.tree.pack_sequence_as(model.input,
                                                                            list(args))
        outputs = keras.tree.flatten(model(packed, training=False))
        out_names[:] = _output_names(model, len(outputs))
        return dict(zip(out_names, outputs, strict=True))

    traced = TracedModel(stack.tf.function(forward, input_signature=specs, autograph=False),
                         specs, out_names)
    with _instrumented_calls(stack.tf, list(iter_sublayers(model)),
                             {id(x) for x in training_layers}, traced.scopes), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Trace now, while the wrappers are in place; tf2onnx reuses this trace.
        traced.function.get_concrete_function(*specs)
    return traced


def trace_callable(call: Callable[..., dict[str, Any]], specs: list[Any],
                   stack: KerasStack) -> TracedModel:
    """Trace any callable taking one tensor per spec and returning a dict of outputs."""
    function = stack.tf.function(call, input_signature=specs, autograph=False)
    outputs = function.get_concrete_function(*specs).structured_outputs
    return TracedModel(function, specs, sorted(outputs))


def convert_traced(traced: TracedModel, stack: KerasStack, opset: int = DEFAULT_OPSET,
                   ) -> TraceResult:
    """tf2onnx ``from_function`` on a trace; dynamic batch dim named ``BATCH_DIM``.

    tf2onnx leaves ops it cannot convert in the graph as TensorFlow ops: see
    ``unconverted_nodes``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_model, _ = stack.tf2onnx.convert.from_function(
            traced.function, input_signature=traced.specs, opset=opset)
    _name_batch_dims(onnx_model, traced.input_names, traced.output_names)
    _order_outputs(onnx_model, traced.output_names)
    return TraceResult(onnx_model, traced.scopes, traced.input_names, traced.output_names)


def trace_to_onnx(model: Any, stack: KerasStack, *, opset: int = DEFAULT_OPSET,
                  training_layers: Sequence[Any] = ()) -> TraceResult:
    """``trace_keras`` then ``convert_traced``."""
    return convert_traced(trace_keras(model, stack, training_layers), stack, opset)


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


def export_keras_training_graph(model: Any, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Raw tf2onnx export of an in-memory Keras 3 model, dropout layers in training mode.

    Every dropout-family layer (found recursively) runs with ``training=True``,
    every other layer in inference mode; the batch dimension is dynamic. This is
    the exporter output the rewrite passes consume: it still holds TensorFlow's
    ``StatelessRandom*`` ops, so onnxruntime cannot run it as is.
    """
    stack = import_keras_stack()
    sites = find_dropout_sites(model, stack.keras)
    return trace_to_onnx(model, stack, opset=opset,
                         training_layers=[s.layer for s in sites]).model


# --- Reading the raw export ----------------------------------------------------


def unconverted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes in the default domain that are not ONNX operators (tf2onnx left them as TF ops)."""
    found = []
    for _, node in iter_nodes(model):
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            found.append(node)
    return found


def layer_of_node(node_name: str, scopes: dict[str, str]) -> str | None:
    """The Keras layer path whose name scope is the longest prefix of ``node_name``."""
    best = None
    for scope, path in scopes.items():
        if scope and (node_name == scope or node_name.startswith(scope + "/")):
            if best is None or len(scope) > len(best[0]):
                best = (scope, path)
    return None if best is None else best[1]
