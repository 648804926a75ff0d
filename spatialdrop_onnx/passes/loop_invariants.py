"""Loop-invariant state variables become outer-scope reads; body outputs get a node of their own.

tf2onnx passes a Keras RNN's weights and dropout masks through its ``Loop`` as
state variables the body returns unchanged (the body output *is* the body
input). OpenVINO's ONNX frontend (2026.4, reading a model file) makes an extra
body parameter for every such output and refuses the loop: "The provided loop
body graph canonical inputs size (22), does not match the sum of loop carried
dependencies and two mandatory inputs (13)" — the seed model's encoder has 9
pass-through states, 13 + 9 = 22. Reading outer-scope values, on the other hand,
it maps to ``Loop::set_invariant_input``, its loop-invariant input.

So, for every Loop and Scan (opset 9+) body, at any depth:

1. a Loop state variable whose body output is its body input is loop-invariant:
   the body reads the node's initial value from the enclosing scope instead, and
   the state is removed (node input, body input and output, node output; readers
   of the node output read the initial value, a graph output keeps its name
   through an ``Identity``). Not for Scan: OpenVINO's Scan counts outer-scope
   reads among the body's parameters and refuses those too ("Number of Scan node
   inputs (2) is less than required (3)");
2. every body output that no body node makes (a body input, an outer value, an
   initializer, also the condition passed through) gets an ``Identity`` in the
   body.

The computation is unchanged. onnxruntime and onnx.reference run both forms;
onnxruntime no longer copies pass-through states (step 2 alone would make it
copy each one on every iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import GraphProto, NodeProto
from onnx import helper as oh

from ..graph import NameMaker, rename_values, subgraphs
from ..graph.scopes import model_scopes
from .loop_layout import LoopLayout, loop_layout


@dataclass(frozen=True)
class InvariantReport:
    """States hoisted out of loop bodies and body outputs given an Identity."""

    hoisted: int = 0
    identities: int = 0


def _defined_in(graph: GraphProto) -> set[str]:
    """Every name ``graph`` and its subgraphs define."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for _, sub in subgraphs(node):
            names |= _defined_in(sub)
    return names


def _rename_reads(nodes: object, mapping: dict[str, str]) -> None:
    """Nodes (and their subgraphs) read ``mapping``'s values instead of its keys."""
    for node in nodes:  # type: ignore[attr-defined]
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for _, sub in subgraphs(node):
            rename_values(sub, mapping)  # the keys are defined outside: only reads change


def _invariant_states(layout: LoopLayout) -> list[int]:
    """Indices of the states the body passes through unchanged (and can read from outside)."""
    body, node = layout.body, layout.node
    found: list[int] = []
    defined: set[str] | None = None
    for k in range(layout.states):
        inner = body.input[layout.body_in + k].name
        outer = node.input[layout.node_in + k]
        if not outer or body.output[layout.body_out + k].name != inner:
            continue
        if defined is None:
            defined = _defined_in(body)
        if outer in defined:  # the body shadows the outer name: it cannot read it
            continue
        found.append(k)
    return found


def _hoist(layout: LoopLayout, states: list[int]) -> list[NodeProto]:
    """Remove ``states`` from the loop; the body reads their initial values from outside.

    Returns the Identity nodes the enclosing scope needs for outputs it exports.
    """
    node, body, scope = layout.node, layout.body, layout.scope
    inner_to_outer: dict[str, str] = {}
    final_to_outer: dict[str, str] = {}
    for k in sorted(states, reverse=True):
        outer = node.input[layout.node_in + k]
        inner_to_outer[body.input[layout.body_in + k].name] = outer
        if k < len(node.output) and node.output[k]:
            final_to_outer[node.output[k]] = outer
            del node.output[k]
        elif k < len(node.output):
            del node.output[k]
        del node.input[layout.node_in + k]
        del body.input[layout.body_in + k]
        del body.output[layout.body_out + k]
    rename_values(body, inner_to_outer)
    exported = set(scope.output_names)
    _rename_reads(scope.nodes, final_to_outer)
    return [oh.make_node("Identity", [outer], [final])
            for final, outer in final_to_outer.items() if final in exported]


def _own_outputs(body: GraphProto, fresh: NameMaker) -> int:
    """Give every body output that no body node makes an Identity of its own."""
    made = {name for n in body.node for name in n.output}
    added = 0
    for output in body.output:
        if output.name in made:
            continue
        new = fresh(f"{output.name}__out")
        body.node.append(oh.make_node("Identity", [output.name], [new]))
        output.name = new
        made.add(new)
        added += 1
    return added


def hoist_loop_invariants(model: onnx.ModelProto, fresh: NameMaker) -> InvariantReport:
    """Apply steps 1 and 2 of the module docstring to every Loop/Scan of ``model``, in place."""
    hoisted = identities = 0
    for scope in model_scopes(model, include_ours=True):
        exports: list[NodeProto] = []
        for node in scope.nodes:
            layout = loop_layout(node, scope)
            if layout is None:
                continue
            states = _invariant_states(layout) if layout.is_loop else []
            if states:
                exports += _hoist(layout, states)
                hoisted += len(states)
            identities += _own_outputs(layout.body, fresh)
        scope.nodes.extend(exports)  # type: ignore[attr-defined]
    return InvariantReport(hoisted, identities)
