"""Finding random layers no class test knows: a probe trace in training mode.

A layer like ``keras.applications`` ConvNeXt's ``StochasticDepth`` (a plain
``Layer`` drawing ``floor(keep + uniform)``) or a user's noise layer is random
only in training mode, and nothing in its class says so. The probe traces
``model(x, training=True)`` once (no export: tracing is cheap), collects the
random TensorFlow ops of the graph — also inside the functions it calls — and
attributes each to the innermost layer whose name scope holds it. Layers with
random ops that are not already known become :attr:`LayerKind.RANDOM` layers,
which the conversion then forces to training mode like dropout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .keras_attribution import layer_of_name, owner
from .keras_layers import LayerKind, RandomLayer, iter_sublayers, survey_layers
from .keras_stack import KerasStack, first_line
from .keras_trace import trace_keras

#: Random TensorFlow ops whose type does not contain "Random".
_OTHER_RANDOM_TF_OPS = frozenset({
    "Multinomial", "StatelessMultinomial", "TruncatedNormal", "StatelessTruncatedNormal",
    "StatelessTruncatedNormalV2", "ParameterizedTruncatedNormal",
    "StatelessParameterizedTruncatedNormal",
})


def is_random_tf_op(op_type: str) -> bool:
    """Whether a TensorFlow op type draws (or prepares to draw) random numbers."""
    return "Random" in op_type or op_type in _OTHER_RANDOM_TF_OPS


@dataclass
class ProbeResult:
    """Random layers the probe found, and random ops it could not give to any layer."""

    layers: list[RandomLayer] = field(default_factory=list)
    unattributed: list[str] = field(default_factory=list)
    """Names of random TensorFlow ops outside every layer's scope."""


def _called_functions(node: Any) -> set[str]:
    """Names of the library functions a ``NodeDef`` calls (by op type or attribute)."""
    called = {node.op}
    for value in node.attr.values():
        if value.HasField("func"):
            called.add(value.func.name)
        called.update(f.name for f in value.list.func)
    return called


def _random_functions(library: Any) -> set[str]:
    """Library functions that draw random numbers, directly or through functions they call."""
    calls = {f.signature.name: [n for n in f.node_def] for f in library.function}
    random = {name for name, nodes in calls.items()
              if any(is_random_tf_op(n.op) for n in nodes)}
    changed = True
    while changed:  # a fixed point over the call graph
        changed = False
        for name, nodes in calls.items():
            if name not in random and any(_called_functions(n) & random for n in nodes):
                random.add(name)
                changed = True
    return random


def random_ops_by_scope(graph_def: Any) -> list[tuple[str, str]]:
    """``(node name, op type)`` of every top-level node that is or calls something random."""
    random_functions = _random_functions(graph_def.library)
    return [(node.name, node.op) for node in graph_def.node
            if is_random_tf_op(node.op) or _called_functions(node) & random_functions]


def probe_random_layers(model: Any, stack: KerasStack, known: Iterable[str]) -> ProbeResult:
    """Layers that draw random numbers in ``model(x, training=True)``, except ``known`` paths.

    Random ops inside a known layer (or nested in one: an RNN's cell) are that
    layer's business and skipped. When the training-mode trace fails in Keras
    itself, the layers whose own training-mode call fails are found
    (:func:`_failing_layers`): they are returned as inference-only random
    layers, named, and the other candidates are probed without them.
    """
    known_paths = {path: path for path in known}
    try:
        traced = trace_keras(model, stack, training=True)
        failing: list[RandomLayer] = []
    except Exception:  # noqa: BLE001 - tracing runs user layers
        failing, working = _failing_layers(model, stack, known_paths)
        if not failing:
            raise  # not one layer's doing: the caller warns with the original error
        traced = trace_keras(model, stack, working)
    graph_def = traced.concrete_function().graph.as_graph_def()
    layers = dict(iter_sublayers(model))
    ops: dict[str, Counter[str]] = {}
    result = ProbeResult(layers=list(failing))
    failing_paths = {layer.path: layer.path for layer in failing}
    for name, op_type in random_ops_by_scope(graph_def):
        path = layer_of_name(name, traced.scopes)
        if path is None or path not in layers:
            result.unattributed.append(name)
        elif owner(path, known_paths) is None and owner(path, failing_paths) is None:
            ops.setdefault(path, Counter())[op_type] += 1
    for path, counts in ops.items():
        layer = layers[path]
        result.layers.append(RandomLayer(
            path, type(layer).__name__, LayerKind.RANDOM, None,
            {"random_ops": dict(sorted(counts.items()))}, layer))
    return result


def _failing_layers(model: Any, stack: KerasStack, known: dict[str, str]
                    ) -> tuple[list[RandomLayer], list[Any]]:
    """Probe candidates whose training-mode call fails, and those whose call traces.

    Each candidate is forced to training mode alone (the rest of the model in
    inference mode). A container whose call fails because a layer inside it
    fails is not blamed: only the innermost failing layers are returned (e.g. a
    drop path that builds its noise shape from the ``None`` batch size).
    """
    candidates = [(path, layer) for path, layer
                  in survey_layers(model, stack.keras).probe_candidates
                  if owner(path, known) is None]
    failed: dict[str, tuple[Any, Exception]] = {}
    working = []
    for path, layer in candidates:
        try:
            trace_keras(model, stack, [layer])
        except Exception as err:  # noqa: BLE001 - tracing runs user layers
            failed[path] = (layer, err)
        else:
            working.append(layer)
    innermost = [path for path in failed
                 if not any(other.startswith(path + "/") for other in failed)]
    layers = []
    for path in innermost:
        layer, err = failed[path]
        why = f"{err.__class__.__name__}: {first_line(err)}"
        layers.append(RandomLayer(
            path, type(layer).__name__, LayerKind.RANDOM, None, {"training_call_error": why},
            layer, inference_only=(f"its training-mode call fails in Keras itself ({why}), so "
                                   "it cannot be traced in training mode; exported for "
                                   "inference only")))
    return layers, working


def random_at_inference(model: Any, stack: KerasStack) -> list[str]:
    """Paths of the layers that draw random numbers in ``model(x, training=False)``.

    A layer that forces ``training=True`` itself (the usual Monte-Carlo-dropout
    recipe: a ``Dropout`` subclass whose ``call`` ignores the flag) leaves its
    random ops in an inference-mode trace; nothing else does.
    """
    traced = trace_keras(model, stack, training=False)
    graph_def = traced.concrete_function().graph.as_graph_def()
    paths = {layer_of_name(name, traced.scopes) for name, _ in random_ops_by_scope(graph_def)}
    return sorted(path for path in paths if path is not None)
