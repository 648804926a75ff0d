"""Which main-graph nodes differ from sample to sample: the part worth running N times.

A node is *stochastic* when it draws (a training SpatialDropout, a random op, a
node whose If/Loop/Scan body draws, a call of a function that draws) or reads a
value a stochastic node made, directly or from inside one of its bodies. The
other nodes form the deterministic prefix: the same in every sample, so the
strategies compute them once (the loop outside its body, the fold at batch B).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ...graph import (
    RANDOM_OPS,
    Constants,
    input_at,
    is_spatial_dropout,
    model_scopes,
    subgraphs,
)


@dataclass(frozen=True)
class Partition:
    """Main-graph node indices: ``stochastic`` and the deterministic rest, in graph order."""

    stochastic: tuple[int, ...]
    deterministic: tuple[int, ...]
    reads: tuple[frozenset[str], ...]  # per node: inputs and outer names its bodies read


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes: read inside, defined nowhere inside."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            read |= outer_reads(sub)
        defined.update(node.output)
    read.update(o.name for o in graph.output)
    return read - defined


def node_reads(node: onnx.NodeProto) -> frozenset[str]:
    """A node's inputs and the outer names its bodies read."""
    names = {n for n in node.input if n}
    for _, sub in subgraphs(node):
        names |= outer_reads(sub)
    return frozenset(names)


def _draws(node: onnx.NodeProto, constants: Constants, scope: object,
           drawing_functions: set[tuple[str, str, str]]) -> bool:
    if node.op_type in RANDOM_OPS:
        return True
    if is_spatial_dropout(node):
        flag = input_at(node, 2)
        return bool(flag) and constants.scalar(scope, flag) not in (False, 0)
    return (node.domain, node.op_type, node.overload) in drawing_functions


def _drawing_functions(model: onnx.ModelProto, constants: Constants) -> set[tuple[str, str, str]]:
    """Model-local functions whose body (or a function it calls) draws."""
    scopes = model_scopes(model)
    drawing: set[tuple[str, str, str]] = set()
    changed = True
    while changed:
        changed = False
        for scope in scopes:
            function = scope.top.function
            if function is None:
                continue
            key = (function.domain, function.name, function.overload)
            if key in drawing:
                continue
            if any(_draws(n, constants, scope, drawing) for n in scope.nodes):
                drawing.add(key)
                changed = True
    return drawing


def _body_draws(graph: onnx.GraphProto, drawing_functions: set[tuple[str, str, str]]) -> bool:
    """Whether a body (at any depth) may draw: a random op, a SpatialDropout whatever its
    switch (an over-estimate only costs the prefix a node), a call of a drawing function."""
    for node in graph.node:
        if node.op_type in RANDOM_OPS or is_spatial_dropout(node) or \
                (node.domain, node.op_type, node.overload) in drawing_functions:
            return True
        if any(_body_draws(sub, drawing_functions) for _, sub in subgraphs(node)):
            return True
    return False


def partition(model: onnx.ModelProto) -> Partition:
    """Split the main graph of ``model`` (switch already on) into stochastic and the rest."""
    constants = Constants(model)
    main = model_scopes(model)[0]
    drawing_functions = _drawing_functions(model, constants)
    reads = tuple(node_reads(n) for n in main.nodes)
    stochastic_values: set[str] = set()
    stochastic: list[int] = []
    for index, node in enumerate(main.nodes):
        draws = _draws(node, constants, main, drawing_functions) or any(
            _body_draws(sub, drawing_functions) for _, sub in subgraphs(node))
        if draws or reads[index] & stochastic_values:
            stochastic.append(index)
            stochastic_values.update(o for o in node.output if o)
    chosen = set(stochastic)
    rest = tuple(i for i in range(len(main.nodes)) if i not in chosen)
    return Partition(tuple(stochastic), rest, reads)
