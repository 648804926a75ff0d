"""Every place a ``TensorProto`` can sit in a model.

Graph initializers and sparse initializers (values and indices); node
attributes, where *every populated field* (``t``, ``tensors``,
``sparse_tensor``, ``sparse_tensors``, ``g``, ``graphs``) is walked whatever
the attribute's declared ``type`` says (a runtime may read a field the type
does not announce); subgraphs at any depth; model-local functions (their
nodes and their attribute defaults); ``training_info[].initialization`` and
``training_info[].algorithm``.

The walk yields a lazy :class:`Where` with each tensor: the label is only
built (and its model-supplied names escaped) when someone prints it, so
validating a 90,000-node model costs the walk, not 40,000 labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, SparseTensorProto, TensorProto

from ..errors import printable


def _name(text: str) -> str:
    return f"'{printable(text, 60)}'"


class Where:
    """Where a tensor sits: a chain of steps, rendered on ``str()``."""

    __slots__ = ("parent", "kind", "item", "index")

    def __init__(self, parent: Where | None, kind: str, item: object = None,
                 index: int = 0) -> None:
        self.parent, self.kind, self.item, self.index = parent, kind, item, index

    def _step(self) -> str:
        kind, item = self.kind, self.item
        if kind == "graph":
            return f"graph {_name(item.name)}"  # type: ignore[attr-defined]
        if kind == "node":
            node: NodeProto = item  # type: ignore[assignment]
            shown = _name(node.name) if node.name else f"#{self.index}"
            return f", node {shown} ({printable(node.op_type, 60)})"
        if kind == "attribute":
            return f" attribute {_name(item.name)}"  # type: ignore[attr-defined]
        if kind == "graphs":
            return f"[{self.index}]"
        if kind == "function":
            function: onnx.FunctionProto = item  # type: ignore[assignment]
            return f"function {_name(function.domain + '.' + function.name)}"
        if kind == "training":
            return f"training_info[{self.index}].{item}"
        return str(kind)  # fixed words: " initializer", " default", " (sparse values)"...

    def __str__(self) -> str:
        steps = []
        where: Where | None = self
        while where is not None:
            steps.append(where._step())
            where = where.parent
        text = ""
        for step in reversed(steps):
            text += (" " if text and step.startswith("graph ") else "") + step
        return text


def _sparse(sparse: SparseTensorProto, where: Where) -> Iterator[tuple[TensorProto, Where]]:
    yield sparse.values, Where(where, " (sparse values)")
    yield sparse.indices, Where(where, " (sparse indices)")


def _attribute(attr: AttributeProto, parent: Where) -> Iterator[tuple[TensorProto, Where]]:
    where = Where(parent, "attribute", attr)
    if attr.HasField("t"):
        yield attr.t, where
    for tensor in attr.tensors:
        yield tensor, where
    if attr.HasField("sparse_tensor"):
        yield from _sparse(attr.sparse_tensor, where)
    for sparse in attr.sparse_tensors:
        yield from _sparse(sparse, where)
    if attr.HasField("g"):
        yield from _graph(attr.g, where)
    for index, graph in enumerate(attr.graphs):
        yield from _graph(graph, Where(where, "graphs", index=index))


def _nodes(nodes: Iterable[NodeProto], parent: Where) -> Iterator[tuple[TensorProto, Where]]:
    for index, node in enumerate(nodes):
        if node.attribute:
            where = Where(parent, "node", node, index)
            for attr in node.attribute:
                yield from _attribute(attr, where)


def _graph(graph: GraphProto, parent: Where | None) -> Iterator[tuple[TensorProto, Where]]:
    where = Where(parent, "graph", graph)
    if graph.initializer:
        initializer = Where(where, " initializer")
        for tensor in graph.initializer:
            yield tensor, initializer
    if graph.sparse_initializer:
        sparse_initializer = Where(where, " sparse initializer")
        for sparse in graph.sparse_initializer:
            yield from _sparse(sparse, sparse_initializer)
    yield from _nodes(graph.node, where)


def walk_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, Where]]:
    """Like :func:`iter_tensors`, with lazy labels."""
    if model.HasField("graph"):
        yield from _graph(model.graph, None)
    for function in model.functions:
        where = Where(None, "function", function)
        defaults = Where(where, " default")
        for attr in function.attribute_proto:
            yield from _attribute(attr, defaults)
        yield from _nodes(function.node, where)
    for index, info in enumerate(model.training_info):
        for part in ("initialization", "algorithm"):
            if info.HasField(part):
                yield from _graph(getattr(info, part), Where(None, "training", part, index))


def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every TensorProto stored anywhere in ``model``, with a label saying where it sits.

    Labels contain model-supplied names already escaped with
    :func:`~spatialdrop_onnx.errors.printable`.
    """
    for tensor, where in walk_tensors(model):
        yield tensor, str(where)


def is_external(tensor: TensorProto) -> bool:
    """True if a reader would look for ``tensor``'s data in a file.

    ``data_location = EXTERNAL`` or any ``external_data`` entry counts: a reader
    that checks either one is covered.
    """
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """The tensors of ``model`` whose data lives in external files, with their labels."""
    for tensor, where in walk_tensors(model):
        if is_external(tensor):
            yield tensor, str(where)
