"""Walking ONNX protobufs: subgraphs, attributes, our op. Shared by every layer above."""

from __future__ import annotations

from collections.abc import Iterator

from onnx import AttributeProto, GraphProto, NodeProto

from . import spec


def is_spatial_dropout(node: NodeProto) -> bool:
    return node.op_type == spec.OP_TYPE and node.domain == spec.DOMAIN


def get_attr(node: NodeProto, name: str) -> AttributeProto | None:
    return next((attr for attr in node.attribute if attr.name == name), None)


def subgraphs(node: NodeProto) -> Iterator[tuple[AttributeProto, GraphProto]]:
    """The (attribute, graph) pairs of a node's graph-valued attributes (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for graph in attr.graphs:
                yield attr, graph


def iter_nodes(graph: GraphProto) -> Iterator[NodeProto]:
    """Every node of ``graph`` and, depth first, of its subgraphs."""
    for node in graph.node:
        yield node
        for _, sub in subgraphs(node):
            yield from iter_nodes(sub)
