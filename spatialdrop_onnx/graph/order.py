"""Dependency order: a graph whose nodes depend on their own outputs is refused up front.

ONNX requires every graph to be acyclic (and listed in topological order, which
this toolkit tolerates and restores). A cycle — e.g. a random op reading a value
computed from its own draw — has no meaning, and every analysis that follows
producers would walk it forever, so the passes check for one before anything else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import onnx
from onnx import NodeProto

from ..errors import UserError, printable
from .nodes import names_read
from .scopes import model_scopes


def _first_node_on_a_cycle(nodes: Iterable[NodeProto]) -> NodeProto | None:
    """A node of ``nodes`` that depends on itself (Kahn's algorithm), or None."""
    nodes = list(nodes)
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = index
    readers: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for index, node in enumerate(nodes):
        # An If/Loop body reading an outer value depends on it as an input does.
        for source in {producer.get(name) for name in names_read(node)}:
            if source is not None:
                readers[source].append(index)
                waiting[index] += 1
    ready = deque(index for index, count in enumerate(waiting) if count == 0)
    done = 0
    while ready:
        index = ready.popleft()
        done += 1
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done == len(nodes):
        return None
    return next(nodes[index] for index, count in enumerate(waiting) if count > 0)


def check_acyclic(model: onnx.ModelProto) -> None:
    """Refuse a model any of whose scopes (graphs, subgraphs at any depth, function bodies)
    has a dependency cycle."""
    for scope in model_scopes(model, include_ours=True):
        node = _first_node_on_a_cycle(scope.nodes)
        if node is not None:
            which = (f"node {printable(node.name)} ({printable(node.op_type)})" if node.name
                     else f"a {printable(node.op_type)} node")
            raise UserError(f"the model has a dependency cycle in {printable(scope.path)}: "
                            f"{which} depends on its own output")
