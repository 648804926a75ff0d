"""Small helpers over ONNX protobufs shared by the protobuf-level passes (strip, inspect).

These passes work on ``ModelProto`` directly rather than on ``onnx_ir``: on a
90,000-node model, converting to the IR and back alone takes ~4.5 s, more
than twice the strip budget (see docs/passes.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, FunctionProto, GraphProto, NodeProto, TensorProto

from .. import spec
from ..protowalk import get_attr, is_spatial_dropout, subgraphs  # noqa: F401 - re-exported

DEFAULT_DOMAINS = ("", "ai.onnx")
#: Random ops of the standard and TensorFlow vocabularies; their presence means
#: the rule-based passes must look at the model.
RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike",
    "Bernoulli", "Multinomial",
    "StatelessRandomUniformV2", "StatelessRandomUniform", "RandomUniformInt",
    "StatelessRandomNormalV2", "StatelessTruncatedNormalV2",
})


def is_onnx_dropout(node: NodeProto) -> bool:
    return node.op_type == "Dropout" and node.domain in DEFAULT_DOMAINS


def is_random(node: NodeProto) -> bool:
    return node.op_type in RANDOM_OPS


@dataclass
class Scope:
    """One node container: a graph, a subgraph, or a function body.

    ``root`` is the top-level container whose names this scope can see
    (the main graph, or the function), ``path`` says where it sits.
    """

    nodes: object  # RepeatedCompositeFieldContainer[NodeProto]
    path: str
    graph: GraphProto | None
    function: FunctionProto | None
    opset: int
    children: list[Scope] = field(default_factory=list)

    @property
    def output_names(self) -> list[str]:
        if self.graph is not None:
            return [o.name for o in self.graph.output]
        assert self.function is not None
        return list(self.function.output)


def default_opset(opset_imports) -> int:  # noqa: ANN001 - repeated OperatorSetIdProto
    return next((o.version for o in opset_imports if o.domain in DEFAULT_DOMAINS), 0)


def _walk(graph: GraphProto, path: str, function: FunctionProto | None, opset: int) -> Scope:
    scope = Scope(graph.node, path, graph, function, opset)
    for node in graph.node:
        if not node.attribute:  # most nodes: skip the attribute scan
            continue
        for attr, sub in subgraphs(node):
            label = node.name or node.op_type
            scope.children.append(
                _walk(sub, f"{path}/{label}/{attr.name}", function, opset))
    return scope


def model_scopes(model: onnx.ModelProto) -> list[Scope]:
    """Top-level scopes: the main graph, then one per model-local function (with children).

    The SpatialDropout function bodies ``make_portable`` attaches are skipped.
    """
    opset = default_opset(model.opset_import)
    scopes = [_walk(model.graph, "main", None, opset)]
    for function in model.functions:
        if function.domain == spec.DOMAIN:
            continue  # our own SpatialDropout bodies: nothing to strip, rewrite or report
        fopset = default_opset(function.opset_import) or opset
        scope = Scope(function.node, function_path(function), None, function, fopset)
        for node in function.node:
            for attr, sub in subgraphs(node):
                label = node.name or node.op_type
                scope.children.append(
                    _walk(sub, f"{scope.path}/{label}/{attr.name}", function, fopset))
        scopes.append(scope)
    return scopes


def function_path(function: FunctionProto) -> str:
    overload = f":{function.overload}" if function.overload else ""
    return f"function {function.domain}.{function.name}{overload}"


def flatten(scope: Scope) -> Iterator[Scope]:
    yield scope
    for child in scope.children:
        yield from flatten(child)


def constant_values(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Main-graph names with a known constant value (initializers and Constant nodes).

    Initializers that are also graph inputs can be overridden at run time and
    are left out. Tensors with external data are left out (never read).
    """
    inputs = {i.name for i in model.graph.input}
    values: dict[str, TensorProto] = {}
    for init in model.graph.initializer:
        if init.name not in inputs and init.data_location != TensorProto.EXTERNAL:
            values[init.name] = init
    for scope in flatten(model_scopes(model)[0]):
        for node in scope.nodes:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                attr = get_attr(node, "value")
                if attr is not None and attr.type == AttributeProto.TENSOR and \
                        attr.t.data_location != TensorProto.EXTERNAL:
                    values[node.output[0]] = attr.t
                else:
                    for name, kind in (("value_float", "f"), ("value_int", "i")):
                        attr = get_attr(node, name)
                        if attr is not None:
                            dtype = TensorProto.FLOAT if kind == "f" else TensorProto.INT64
                            values[node.output[0]] = onnx.helper.make_tensor(
                                node.output[0], dtype, [], [getattr(attr, kind)])
    return values


def scalar_of(tensor: TensorProto | None) -> float | None:
    """The value of a one-element tensor, or None."""
    if tensor is None:
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    if count != 1:
        return None
    try:
        return onnx.numpy_helper.to_array(tensor).reshape(()).item()
    except (ValueError, TypeError):
        return None


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Declared types of main-graph names (inputs, outputs, value_info, initializers)."""
    types: dict[str, onnx.TypeProto] = {}

    def add_graph(graph: GraphProto) -> None:
        for info in [*graph.input, *graph.value_info, *graph.output]:
            if info.type.HasField("tensor_type"):
                types[info.name] = info.type
        for init in graph.initializer:
            types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, init.dims)
        for node in graph.node:
            for _, sub in subgraphs(node):
                add_graph(sub)

    add_graph(model.graph)
    return types


class NameMaker:
    """Fresh names that collide with nothing in a set of used names."""

    def __init__(self, used: set[str]) -> None:
        self.used = used

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every value and node name in the model (all scopes)."""
    names: set[str] = set()
    for top in model_scopes(model):
        for scope in flatten(top):
            if scope.graph is not None:
                names.update(i.name for i in scope.graph.input)
                names.update(i.name for i in scope.graph.initializer)
            elif scope.function is not None:
                names.update(scope.function.input)
            for node in scope.nodes:
                names.update(node.input)
                names.update(node.output)
                names.add(node.name)
    names.discard("")
    return names


def elem_type_of(types: dict[str, onnx.TypeProto], name: str) -> int:
    info = types.get(name)
    return info.tensor_type.elem_type if info is not None else TensorProto.UNDEFINED


def rank_of(types: dict[str, onnx.TypeProto], name: str) -> int | None:
    info = types.get(name)
    if info is None or not info.tensor_type.HasField("shape"):
        return None
    return len(info.tensor_type.shape.dim)
