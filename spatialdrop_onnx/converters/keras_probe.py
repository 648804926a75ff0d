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
from .keras_layers import LayerKind, RandomLayer, iter_sublayers
from .keras_stack import KerasStack
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
    layer's business and skipped.
    """
    traced = trace_keras(model, stack, training=True)
    graph_def = traced.concrete_function().graph.as_graph_def()
    layers = dict(iter_sublayers(model))
    known_paths = {path: path for path in known}
    ops: dict[str, Counter[str]] = {}
    result = ProbeResult()
    for name, op_type in random_ops_by_scope(graph_def):
        path = layer_of_name(name, traced.scopes)
        if path is None or path not in layers:
            result.unattributed.append(name)
        elif owner(path, known_paths) is None:
            ops.setdefault(path, Counter())[op_type] += 1
    for path, counts in ops.items():
        layer = layers[path]
        result.layers.append(RandomLayer(
            path, type(layer).__name__, LayerKind.RANDOM, None,
            {"random_ops": dict(sorted(counts.items()))}, layer))
    return result
