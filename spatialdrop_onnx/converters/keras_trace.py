"""Tracing a Keras 3 model into a ``tf.function`` with chosen layers in training mode.

tf2onnx's ``from_keras`` reads Keras-2 attributes and fails on Keras 3, so the
model is wrapped in a ``tf.function`` over its ``keras.Input`` specs. The
model is called with ``training=False`` (BatchNormalization and every other
layer in inference form), while each layer to keep random has its ``call``
temporarily replaced by a wrapper that forces ``training=True``: its random
subgraph survives into the trace.

The wrappers also record the TensorFlow name scope each layer ran under, so a
node of the exported graph can be traced back to the Keras layer that made it
(:mod:`.keras_attribution`).

While tracing, every draw of a Keras ``SeedGenerator`` gets a seed of its own
(:func:`distinct_trace_seeds`): freezing the graph would otherwise give all
draws of one generator the same constant seed, and tf2onnx merges identical
random ops — an LSTM's four gate masks would become one shared mask.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .keras_layers import iter_sublayers
from .keras_stack import KerasStack


@dataclass
class TracedModel:
    """A traced ``tf.function`` ready for export, and what the trace learnt."""

    function: Any
    specs: list[Any]
    """``tf.TensorSpec`` per input; their names become the ONNX input names."""
    output_names: list[str]
    scopes: dict[str, str] = field(default_factory=dict)
    """TensorFlow name scope → Keras layer path, for every layer that ran."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def concrete_function(self) -> Any:
        """The concrete function of the trace (cached: no retracing)."""
        return self.function.get_concrete_function(*self.specs)


@contextlib.contextmanager
def _instrumented_calls(
    tf: Any,
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


@contextlib.contextmanager
def distinct_trace_seeds(stack: KerasStack) -> Iterator[None]:
    """While tracing, every ``keras.random.SeedGenerator`` draw returns a seed of its own.

    Why: freezing replaces every read of a generator's state variable by the
    same constant (the ``Assign`` ops that advance it are dropped), so all draws
    of one generator in a trace would get the same (key, counter), and tf2onnx
    merges identical random ops — an LSTM's 4 gate masks become one, every
    unseeded draw of the global generator the same. Each draw inside a
    ``tf.function`` instead gets ``[initial seed, draw number]`` as a constant
    (the state variable is not read: a generator created inside the trace
    cannot be). Eager draws are untouched. The seeds only tell the draws apart:
    the rewrite replaces every converted draw with an unseeded op.
    """
    generator_class = stack.keras.random.SeedGenerator
    original = generator_class.next
    counter = itertools.count(1)
    tf = stack.tf

    def next_seed(self: Any, ordered: bool = True) -> Any:
        if not tf.inside_function():
            return original(self, ordered)
        initial = getattr(self, "_initial_seed", None)
        return tf.constant([int(initial or 0), next(counter)], dtype=self.state.dtype)

    generator_class.next = next_seed
    try:
        yield
    finally:
        generator_class.next = original


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


def _is_shape(value: Any) -> bool:
    """Whether a build-config entry is one shape (a list of ints/None), not a structure."""
    return isinstance(value, (list, tuple)) and \
        all(d is None or isinstance(d, int) for d in value)


def _built_input_structure(model: Any) -> Any:
    """The input structure a subclassed model was built with: a name → shape nest, or None.

    A subclassed ``keras.Model`` called on ``keras.Input`` before saving has no
    ``model.inputs`` after loading (Keras 3 restores none), but its build config
    keeps the input shape: one shape, a list of shapes or a dict of them.
    """
    getter = getattr(model, "get_build_config", None)
    config = getter() if callable(getter) else None
    shapes = (config or {}).get("input_shape")
    if shapes is None:
        return None
    if _is_shape(shapes):
        return tuple(shapes)
    if isinstance(shapes, dict) and all(_is_shape(v) for v in shapes.values()):
        return {str(k): tuple(v) for k, v in shapes.items()}
    if isinstance(shapes, (list, tuple)) and shapes and all(_is_shape(v) for v in shapes):
        return [tuple(v) for v in shapes]
    return None


def _built_structure(model: Any) -> Any:
    """The leaves-by-name nest of a subclassed model's build config (None: no config)."""
    built = _built_input_structure(model)
    # Leaves for keras.tree: a shape tuple would itself count as a nest.
    if isinstance(built, dict):
        return {name: name for name in built}
    if isinstance(built, list):
        return [f"input_{i}" for i in range(len(built))]
    return None if built is None else "input"


def pack_inputs(model: Any, arrays: Sequence[Any], keras: Any) -> Any:
    """The model's call argument from one tensor per input spec (the specs' order).

    One input: the tensor itself (Sequential models take nothing else); several: the
    functional model's own input structure (list or dict), or a subclassed model's
    build-config structure.
    """
    if list(getattr(model, "inputs", None) or []):
        if len(arrays) == 1:
            return arrays[0]
        return keras.tree.pack_sequence_as(model.input, list(arrays))
    structure = _built_structure(model)
    if len(arrays) == 1 and not isinstance(structure, (dict, list)):
        return arrays[0]
    return keras.tree.pack_sequence_as(structure, list(arrays))


def keras_input_specs(model: Any, stack: KerasStack) -> list[Any]:
    """One named ``tf.TensorSpec`` per model input (Keras names, made valid for TensorFlow).

    A subclassed model without ``model.inputs`` gets its specs from its build
    config (:func:`_built_input_structure`): names are the dict keys (else
    ``input``/``input_i``), the dtype Keras' ``floatx`` (the config keeps none).
    """
    tf = stack.tf
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        built = _built_input_structure(model)
        if built is None:
            raise UserError("the model has no known inputs (build it with keras.Input, or "
                            "call it once on data, before saving)")
        dtype = stack.keras.backend.floatx()
        if isinstance(built, dict):
            names = sorted(built)  # keras.tree flattens a dict in key order
            shapes = [built[n] for n in names]
        elif isinstance(built, list):
            names, shapes = [f"input_{i}" for i in range(len(built))], built
        else:
            names, shapes = ["input"], [built]
        return [tf.TensorSpec(shape=shape, dtype=dtype, name=_tf_name(n, f"input_{i}"))
                for i, (n, shape) in enumerate(zip(names, shapes, strict=True))]
    specs = [tf.TensorSpec(shape=tuple(t.shape), dtype=t.dtype, name=_input_name(t, i))
             for i, t in enumerate(inputs)]
    if len({s.name for s in specs}) != len(specs):
        specs = [tf.TensorSpec(s.shape, s.dtype, name=f"input_{i}") for i, s in enumerate(specs)]
    return specs


def trace_keras(model: Any, stack: KerasStack, training_layers: Sequence[Any] = (), *,
                training: bool = False) -> TracedModel:
    """Trace ``model(x, training=training)`` with ``training_layers`` forced to training mode."""
    keras = stack.keras
    specs = keras_input_specs(model, stack)
    out_names: list[str] = []  # known once the model has run (Sequential has no .output)

    def forward(*args: Any) -> dict[str, Any]:
        packed = pack_inputs(model, args, keras)
        outputs = keras.tree.flatten(model(packed, training=training))
        out_names[:] = _output_names(model, len(outputs))
        return dict(zip(out_names, outputs, strict=True))

    traced = TracedModel(stack.tf.function(forward, input_signature=specs, autograph=False),
                         specs, out_names)
    with _instrumented_calls(stack.tf, list(iter_sublayers(model)),
                             {id(x) for x in training_layers}, traced.scopes), \
            distinct_trace_seeds(stack), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Trace now, while the wrappers are in place; the export reuses this trace.
        traced.concrete_function()
    return traced


def trace_callable(call: Callable[..., dict[str, Any]], specs: list[Any],
                   stack: KerasStack) -> TracedModel:
    """Trace any callable taking one tensor per spec and returning a dict of outputs."""
    function = stack.tf.function(call, input_signature=specs, autograph=False)
    outputs = function.get_concrete_function(*specs).structured_outputs
    return TracedModel(function, specs, sorted(outputs))
