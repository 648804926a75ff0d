"""Rewrite only the neighbourhood of the sites of a large graph, then splice it back.

Converting a graph to onnx_ir and back costs about 60 µs per node — 6 s for a
100,000-node model — while a model's dropout sites and the nodes their rules
look at are a few dozen nodes each. For a large main graph the rules therefore
run on a *region* model: every anchor (random op, Dropout, SpatialDropout), the
nodes a few steps below it (where a site ends) and a few steps above the
region (noise-shape arithmetic, the scaled data). Values flowing in become
typed region inputs (small constants stay constants, so rules can read them);
values flowing out become region outputs. The rewritten region replaces the
original nodes, and a stable topological sort puts the new nodes where their
inputs exist, leaving the order of every other node unchanged.

What the rules cannot see through a region's boundary makes them refuse a site
(an unknown dim is never taken as shared), never convert it differently; the
answer for a dim is the same full-model type facts either way.

Used only when every anchor sits in the main graph's top level, outside
subgraphs and functions; otherwise the whole model is converted.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import NodeProto, TensorProto

from ..graph import (
    holds_values,
    is_onnx_dropout,
    is_random,
    is_spatial_dropout,
    model_scopes,
    names_read,
    subgraphs,
)
from .shapes import BINARY_OPS, SAME_SHAPE_OPS

#: Main graphs smaller than this are converted whole (the region would save little).
MIN_NODES = 2_000
#: How far below an anchor a site can end, and how far above the region rules look.
DOWNSTREAM_DEPTH = 8
UPSTREAM_DEPTH = 12
_SMALL_TENSOR_BYTES = 1024


def is_anchor(node: NodeProto) -> bool:
    return is_random(node) or is_onnx_dropout(node) or is_spatial_dropout(node)


@dataclass
class Region:
    """A sub-model around the anchors, and which main-graph nodes it stands for."""

    model: onnx.ModelProto
    positions: list[int]  # indices of the original main-graph nodes in the region
    #: Where each main-graph value is made, and which main-graph nodes read it.
    producer: dict[str, int]
    consumers: dict[str, list[int]]


def extract(model: onnx.ModelProto) -> Region | None:
    """The region of ``model`` around its anchors, or None to convert the model whole."""
    graph = model.graph
    if len(graph.node) < MIN_NODES:
        return None
    scopes = model_scopes(model)
    if any(is_anchor(n) for s in scopes[1:] for n in s.nodes):
        return None  # anchors in subgraphs or functions: the general path handles them
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
        for name in names_read(node):
            consumers[name].append(index)
    anchors = [i for i, node in enumerate(graph.node) if is_anchor(node)]
    if not anchors:
        return None
    chosen: set[int] = set()
    _walk(anchors, DOWNSTREAM_DEPTH, chosen,
          lambda i: (c for out in graph.node[i].output for c in consumers.get(out, ())))
    _walk(sorted(chosen), UPSTREAM_DEPTH, chosen,
          lambda i: (producer[n] for n in names_read(graph.node[i]) if n in producer))
    if len(chosen) > len(graph.node) // 2:
        return None  # the sites are most of the model: convert it whole
    if any(next(subgraphs(graph.node[i]), None) is not None for i in chosen):
        return None
    positions = sorted(chosen)
    return Region(_region_model(model, positions, producer, consumers), positions, producer,
                  consumers)


def _walk(start: Iterable[int], depth: int, chosen: set[int], neighbours) -> None:  # noqa: ANN001
    queue = deque((i, 0) for i in start)
    chosen.update(i for i, _ in queue)
    while queue:
        index, level = queue.popleft()
        if level == depth:
            continue
        for following in neighbours(index):
            if following not in chosen:
                chosen.add(following)
                queue.append((following, level + 1))


def _region_model(model: onnx.ModelProto, positions: list[int], producer: dict[str, int],
                  consumers: dict[str, list[int]]) -> onnx.ModelProto:
    graph = model.graph
    inside = set(positions)
    nodes = [graph.node[i] for i in positions]
    produced = {name for node in nodes for name in node.output if name}
    declared = {info.name: info for info in [*graph.input, *graph.value_info, *graph.output]}
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = {info.name for info in graph.input}
    graph_outputs = {info.name for info in graph.output}

    carried = _ShapeCarrier(graph, producer, declared, initializers)
    region = onnx.GraphProto(name=graph.name or "region")
    region.node.extend(nodes)
    seen: set[str] = set()
    for node in nodes:
        for name in names_read(node):
            if name in produced or name in seen:
                continue
            seen.add(name)
            init = initializers.get(name)
            small = init is not None and holds_values(init) and \
                init.ByteSize() <= _SMALL_TENSOR_BYTES
            if small and name not in graph_inputs:
                region.initializer.append(init)  # a constant rules may read
                continue
            region.input.append(_typed(name, declared, init) if name in declared or init
                                else carried.value_info(name))
    for name in sorted(produced):
        outside = any(i not in inside for i in consumers.get(name, ()))
        if outside or name in graph_outputs:
            region.output.append(_typed(name, declared, None))
    region.value_info.extend(info for name, info in declared.items()
                             if name in produced and name not in graph_outputs)
    result = onnx.ModelProto()
    result.ir_version = model.ir_version
    result.opset_import.extend(model.opset_import)
    result.functions.extend(model.functions)
    result.graph.CopyFrom(region)
    return result


class _ShapeCarrier:
    """Types for the region's untyped inputs, carried down from a declared value through
    the shape-preserving ops above it (the chain the rules' shape reasoning walks), so a
    region sees what the whole graph shows without running shape inference on it."""

    def __init__(self, graph: onnx.GraphProto, producer: dict[str, int],
                 declared: dict[str, onnx.ValueInfoProto],
                 initializers: dict[str, TensorProto]) -> None:
        self.graph = graph
        self.producer = producer  # value -> index of the main-graph node that makes it
        self.declared = declared
        self.initializers = initializers

    def _producer(self, name: str) -> NodeProto | None:
        index = self.producer.get(name)
        return None if index is None else self.graph.node[index]

    def _scalar(self, name: str) -> bool:
        init = self.initializers.get(name)
        if init is not None:
            count = 1
            for dim in init.dims:
                count *= dim
            return count == 1
        node = self._producer(name)
        return node is not None and node.op_type == "Constant" and not node.input

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        current, steps = name, 0
        while current not in self.declared and steps < 10_000:
            node = self._producer(current)
            if node is None or node.domain not in ("", "ai.onnx") or node.output[0] != current:
                break
            inputs = [n for n in node.input if n]
            if node.op_type in SAME_SHAPE_OPS and inputs:
                current = inputs[0]
            elif node.op_type in BINARY_OPS and len(inputs) == 2 and self._scalar(inputs[1]):
                current = inputs[0]
            elif node.op_type in BINARY_OPS and len(inputs) == 2 and self._scalar(inputs[0]):
                current = inputs[1]
            else:
                break
            steps += 1
        source = self.declared.get(current)
        if source is None or not source.type.tensor_type.HasField("shape"):
            return onnx.helper.make_value_info(name, onnx.TypeProto())
        info = onnx.ValueInfoProto()
        info.CopyFrom(source)
        info.name = name
        if current != name:  # the shape carries over; the element type may not (Cast)
            info.type.tensor_type.elem_type = TensorProto.UNDEFINED
        return info


def _typed(name: str, declared: dict[str, onnx.ValueInfoProto],
           init: TensorProto | None) -> onnx.ValueInfoProto:
    if name in declared:
        info = onnx.ValueInfoProto()
        info.CopyFrom(declared[name])
        return info
    if init is not None:
        return onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims))
    return onnx.helper.make_value_info(name, onnx.TypeProto())


def splice(model: onnx.ModelProto, region: Region, rewritten: onnx.ModelProto) -> None:
    """Replace the region's nodes in ``model`` (in place) with the rewritten region's nodes.

    Each connected part of the rewritten region goes where its first surviving
    original node was; if that breaks the order (a part reads a value made later,
    or a value it makes is read earlier), a stable topological sort fixes it. Then
    the initializers and value_info entries only the replaced nodes referred to go
    (the sites' RNG keys, removed values). Everything is checked locally: the cost
    is the region's size, not the graph's.
    """
    graph = model.graph
    inside = set(region.positions)
    original_position = {out: i for i in region.positions for out in graph.node[i].output if out}
    new_nodes = list(rewritten.graph.node)
    slots: dict[int, list[NodeProto]] = defaultdict(list)
    ordered = True
    for part in _connected_parts(new_nodes):
        known = [original_position[o] for n in part for o in n.output if o in original_position]
        slot = min(known) if known else region.positions[0]
        slots[slot].extend(part)
        ordered = ordered and _fits(part, slot, region, inside)
    spliced: list[NodeProto] = []
    for index, node in enumerate(graph.node):
        spliced.extend(slots.get(index, ()))
        if index not in inside:
            spliced.append(node)
    if not ordered:
        spliced = _stable_topological(spliced, graph)
    # What the replaced nodes read or made, and nothing else reads or makes any more.
    new_reads = {name for node in new_nodes for name in names_read(node)}
    new_made = {name for node in new_nodes for name in node.output}
    read_before = {name for i in region.positions for name in names_read(graph.node[i])}
    made_before = {name for i in region.positions for name in graph.node[i].output}
    outputs = {o.name for o in graph.output}
    unread = {name for name in read_before - new_reads - outputs
              if all(c in inside for c in region.consumers.get(name, ()))}
    gone = made_before - new_made
    del graph.node[:]
    graph.node.extend(spliced)
    graph_inputs = {i.name for i in graph.input}
    if any(i.name in unread and i.name not in graph_inputs for i in graph.initializer):
        survivors = [i for i in graph.initializer
                     if i.name not in unread or i.name in graph_inputs]
        del graph.initializer[:]
        graph.initializer.extend(survivors)
    if any(v.name in gone for v in graph.value_info):
        survivors = [v for v in graph.value_info if v.name not in gone]
        del graph.value_info[:]
        graph.value_info.extend(survivors)
    present = {(f.domain, f.name, f.overload) for f in model.functions}
    model.functions.extend(f for f in rewritten.functions
                           if (f.domain, f.name, f.overload) not in present)
    imports = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in rewritten.opset_import if o.domain not in imports)


def _fits(part: list[NodeProto], slot: int, region: Region, inside: set[int]) -> bool:
    """Whether ``part`` placed at ``slot`` reads only values made before it (outside the
    region) and makes only values read after it (outside the region)."""
    made = {name for node in part for name in node.output}
    for node in part:
        for name in names_read(node):
            if name in made:
                continue
            position = region.producer.get(name)
            if position is not None and position not in inside and position >= slot:
                return False
    for name in made:
        for reader in region.consumers.get(name, ()):
            if reader not in inside and reader <= slot:
                return False
    return True


def _connected_parts(nodes: list[NodeProto]) -> list[list[NodeProto]]:
    """The nodes grouped by the values they share (each group in the given order)."""
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    for i, node in enumerate(nodes):
        for name in names_read(node):
            j = producer.get(name)
            if j is not None:
                parent[find(i)] = find(j)
    groups: dict[int, list[NodeProto]] = defaultdict(list)
    for i, node in enumerate(nodes):
        groups[find(i)].append(node)
    return list(groups.values())


def _stable_topological(nodes: list[NodeProto], graph: onnx.GraphProto) -> list[NodeProto]:
    """``nodes`` in a topological order that keeps the given order wherever it is valid."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    produced_by: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            produced_by[name] = index
    waiting: dict[str, list[int]] = defaultdict(list)
    missing = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for name in set(names_read(node)):
            if name not in available and name in produced_by:
                missing[index] += 1
                waiting[name].append(index)
    ready = deque(i for i in range(len(nodes)) if missing[i] == 0)
    emitted: list[NodeProto] = []
    done = [False] * len(nodes)
    # Emit in the given order; a node whose inputs are not ready yet is emitted as
    # soon as its last producer is (nodes already in order never wait).
    heap = list(ready)
    heapq.heapify(heap)
    while heap:
        index = heapq.heappop(heap)
        if done[index]:
            continue
        done[index] = True
        emitted.append(nodes[index])
        for name in nodes[index].output:
            for follower in waiting.pop(name, ()):
                missing[follower] -= 1
                if missing[follower] == 0:
                    heapq.heappush(heap, follower)
    if len(emitted) != len(nodes):  # a cycle: keep the given order, let the checker say so
        return nodes
    return emitted
