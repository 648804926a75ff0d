"""Every place a ``TensorProto`` can sit in a model.

Graph initializers and sparse initializers (values and indices); node
attributes, where *every populated field* (``t``, ``tensors``,
``sparse_tensor``, ``sparse_tensors``, ``g``, ``graphs``) is walked whatever
the attribute's declared ``type`` says (a runtime may read a field the type
does not announce); subgraphs at any depth; model-local functions (their
nodes and their attribute defaults); ``training_info[].initialization`` and
``training_info[].algorithm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, SparseTensorProto, TensorProto

from ..errors import printable


def _name(text: str) -> str:
    return f"'{printable(text, 60)}'"


def _sparse(sparse: SparseTensorProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    yield sparse.values, f"{where} (sparse values)"
    yield sparse.indices, f"{where} (sparse indices)"


def _attribute(attr: AttributeProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    label = f"{where} attribute {_name(attr.name)}"
    if attr.HasField("t"):
        yield attr.t, label
    for tensor in attr.tensors:
        yield tensor, label
    if attr.HasField("sparse_tensor"):
        yield from _sparse(attr.sparse_tensor, label)
    for sparse in attr.sparse_tensors:
        yield from _sparse(sparse, label)
    if attr.HasField("g"):
        yield from _graph(attr.g, label)
    for index, graph in enumerate(attr.graphs):
        yield from _graph(graph, f"{label}[{index}]")


def _nodes(nodes: Iterable[NodeProto], where: str) -> Iterator[tuple[TensorProto, str]]:
    for index, node in enumerate(nodes):
        shown = _name(node.name) if node.name else f"#{index}"
        label = f"{where}, node {shown} ({printable(node.op_type, 60)})"
        for attr in node.attribute:
            yield from _attribute(attr, label)


def _graph(graph: GraphProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    label = f"{where} graph {_name(graph.name)}" if where else f"graph {_name(graph.name)}"
    for tensor in graph.initializer:
        yield tensor, f"{label} initializer"
    for sparse in graph.sparse_initializer:
        yield from _sparse(sparse, f"{label} sparse initializer")
    yield from _nodes(graph.node, label)


def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every TensorProto stored anywhere in ``model``, with a label saying where it sits.

    Labels contain model-supplied names already escaped with
    :func:`~spatialdrop_onnx.errors.printable`.
    """
    if model.HasField("graph"):
        yield from _graph(model.graph, "")
    for function in model.functions:
        label = f"function {_name(function.domain + '.' + function.name)}"
        for attr in function.attribute_proto:
            yield from _attribute(attr, f"{label} default")
        yield from _nodes(function.node, label)
    for index, info in enumerate(model.training_info):
        if info.HasField("initialization"):
            yield from _graph(info.initialization, f"training_info[{index}].initialization")
        if info.HasField("algorithm"):
            yield from _graph(info.algorithm, f"training_info[{index}].algorithm")


def is_external(tensor: TensorProto) -> bool:
    """True if a reader would look for ``tensor``'s data in a file.

    ``data_location = EXTERNAL`` or any ``external_data`` entry counts: a reader
    that checks either one is covered.
    """
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """The tensors of ``model`` whose data lives in external files, with their labels."""
    for tensor, where in iter_tensors(model):
        if is_external(tensor):
            yield tensor, where
