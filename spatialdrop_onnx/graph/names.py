"""Names: fresh names that collide with nothing, every name in a model, renaming values."""

from __future__ import annotations

import onnx
from onnx import GraphProto

from .nodes import subgraphs
from .scopes import model_scopes


class NameMaker:
    """Fresh names that collide with nothing in a set of used names."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self._next: dict[str, int] = {}  # base -> the suffix to try first (no rescans)

    def __call__(self, base: str) -> str:
        name, k = base, self._next.get(base, 0)
        if k:
            name = f"{base}_{k}"
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self._next[base] = k + 1
        self.used.add(name)
        return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every value and node name in the model (all scopes, our function bodies included)."""
    names: set[str] = set()
    for scope in model_scopes(model, include_ours=True):
        names.update(scope.input_names)
        if scope.graph is not None:
            names.update(i.name for i in scope.graph.initializer)
        for node in scope.nodes:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def rename_values(graph: GraphProto, mapping: dict[str, str]) -> None:
    """Rename values of ``graph`` and of every subgraph in it, in place.

    Value names are unique across a graph and its subgraphs (ONNX's SSA rule),
    so one mapping serves the whole tree: node inputs and outputs, graph inputs,
    outputs, initializers and value_info. Model-local functions have names of
    their own and are not touched.
    """
    if not mapping:
        return
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = mapping.get(info.name, info.name)
    for tensor in [*graph.initializer]:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name in mapping:
                    names[i] = mapping[name]
        for _, sub in subgraphs(node):
            rename_values(sub, mapping)
