"""The onnx_ir side of rewrite: apply the rules, thread ``training_mode``, remove dead nodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from .. import spec
from ..errors import UserError
from . import _proto
from .rule_set import dropout_rule_set
from .rules._common import RewriteContext
from .shapes import ShapeReasoner

TRAINING_MODE = "training_mode"


def _subgraphs(node: ir.Node) -> list[tuple[str, ir.Graph]]:
    found = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            found.append((attr.name, attr.as_graph()))
        elif attr.type == ir.AttributeType.GRAPHS:
            found.extend((attr.name, g) for g in attr.as_graphs())
    return found


class IrRewrite:
    """One rewrite of one ``ir.Model`` in place."""

    def __init__(self, model: ir.Model, hints: dict, *, training_default: bool,
                 used_names: set[str], elementwise: str = "dropout") -> None:
        self.model = model
        self.training_default = training_default
        self.paths: dict[int, str] = {}
        self.owners: dict[int, ir.Function | None] = {}
        self.scopes: list[tuple[ir.Graph | ir.Function, str]] = []
        self._index()
        self.ctx = RewriteContext(model, ShapeReasoner(hints), self.paths, self.owners,
                                  self._training_value, used_names=set(used_names),
                                  elementwise=elementwise)
        self._training: dict[int | None, ir.Value] = {}
        self._functions_with_new_flag: list[ir.Function] = []
        self.rewired = 0
        # Names as the input model has them (the rewriter names unnamed nodes).
        self._given_names = {id(n): n.name or "" for scope, _ in self.scopes for n in scope}
        self._function_input_shapes()

    def _function_input_shapes(self) -> None:
        """Give function inputs the dims every call site agrees on (functions are untyped).

        Iterated so a function called only from another function gets them too.
        """
        shapes = self.ctx.shapes
        functions = [f for f in self.model.functions.values() if f.domain != spec.DOMAIN]
        known: set[tuple[int, int]] = set()
        for _ in range(len(functions) + 1):
            progress = False
            for function in functions:
                identifier = function.identifier()
                calls = [n for scope, _ in self.scopes for n in scope
                         if n.op_identifier() == identifier]
                if not calls:
                    continue
                for index, value in enumerate(function.inputs):
                    if (id(function), index) in known:
                        continue
                    seen = [shapes.data_dims(c.inputs[index]) if index < len(c.inputs) and
                            c.inputs[index] is not None else None for c in calls]
                    first = seen[0]
                    if first is None or any(d != first for d in seen[1:]):
                        continue
                    shapes.assume(value, first)
                    known.add((id(function), index))
                    progress = True
            if not progress:
                break

    # -- indexing ---------------------------------------------------------------

    def _index(self) -> None:
        def walk(graph: ir.Graph | ir.Function, path: str, owner: ir.Function | None) -> None:
            self.paths[id(graph)] = path
            self.owners[id(graph)] = owner
            self.scopes.append((graph, path))
            for node in graph:
                for attr_name, sub in _subgraphs(node):
                    walk(sub, f"{path}/{node.name or node.op_type}/{attr_name}", owner)

        walk(self.model.graph, "main", None)
        for function in self.model.functions.values():
            if function.domain == spec.DOMAIN:
                continue  # our own function bodies are never rewritten
            path = f"function {function.domain}.{function.name}" + (
                f":{function.overload}" if function.overload else "")
            self.paths[id(function.graph)] = path
            self.owners[id(function.graph)] = function
            walk(function, path, function)

    def _owner_of_graph(self, graph: ir.Graph | ir.Function | None) -> ir.Function | None:
        return self.owners.get(id(graph)) if graph is not None else None

    # -- the training switch ------------------------------------------------------

    def _training_value(self, owner: ir.Function | None) -> ir.Value:
        key = None if owner is None else id(owner)
        if key in self._training:
            return self._training[key]
        if owner is None:
            value = self._main_training_value()
        else:
            value = next((v for v in owner.inputs if v.name == TRAINING_MODE), None)
            if value is None:
                value = ir.Value(name=TRAINING_MODE, type=ir.TensorType(ir.DataType.BOOL),
                                 shape=ir.Shape([]))
                owner.inputs.append(value)
                self._functions_with_new_flag.append(owner)
        self._training[key] = value
        return value

    def _main_training_value(self) -> ir.Value:
        graph = self.model.graph
        existing = next((v for v in graph.inputs if v.name == TRAINING_MODE), None)
        default = ir.tensor(np.array(self.training_default), name=TRAINING_MODE)
        if existing is not None:
            if existing.dtype not in (None, ir.DataType.BOOL) or (
                    existing.shape is not None and len(existing.shape) != 0):
                raise UserError(
                    f"the model already has a graph input {TRAINING_MODE!r} that is not a "
                    "boolean scalar; rename it before rewriting")
            if existing.const_value is None:
                existing.const_value = default
                graph.register_initializer(existing)
            return existing
        clash = any(v.name == TRAINING_MODE for v in graph.initializers.values()) or \
            any(out.name == TRAINING_MODE for node in graph for out in node.outputs)
        if clash:
            raise UserError(f"the model already uses the name {TRAINING_MODE!r} for a value "
                            "that is not a graph input; rename it before rewriting")
        value = ir.Value(name=TRAINING_MODE, type=ir.TensorType(ir.DataType.BOOL),
                         shape=ir.Shape([]), const_value=default)
        graph.inputs.append(value)
        graph.register_initializer(value)
        return value

    def _propagate_to_call_sites(self) -> None:
        """Every call of a function that gained a ``training_mode`` input passes one on."""
        done: set[int] = set()
        while self._functions_with_new_flag:
            function = self._functions_with_new_flag.pop()
            if id(function) in done:
                continue
            done.add(id(function))
            identifier = function.identifier()
            for scope, _ in list(self.scopes):
                for node in list(scope):
                    if node.op_identifier() != identifier:
                        continue
                    caller = self._owner_of_graph(node.graph)
                    flag = self._training_value(caller)
                    position = len(function.inputs) - 1
                    if len(node.inputs) < position + 1:
                        node.resize_inputs(position + 1)
                    node.replace_input_with(position, flag)

    # -- running ----------------------------------------------------------------

    #: Rule passes at most: a site after an unconvertible-until-now op (e.g. a second
    #: Keras dropout after the first) only gets known shapes once the first is converted.
    MAX_PASSES = 4

    def run(self, reinfer: Callable[[ir.Model], dict] | None = None) -> None:
        """Apply the rules; with ``reinfer``, retry failed sites with fresh shape hints."""
        count = 0
        for attempt in range(self.MAX_PASSES):
            applied = self._apply_rules()
            count += applied
            if not applied or not self.ctx.failures or reinfer is None \
                    or attempt == self.MAX_PASSES - 1:
                break
            # Shape inference now sees through the converted sites.
            self._remove_dead()
            self.ctx.shapes = ShapeReasoner(reinfer(self.model))
            self.ctx.failures.clear()
            self._function_input_shapes()
        self.rewired = count - len(self.ctx.sites)
        self._propagate_to_call_sites()
        self._remove_dead()

    def _apply_rules(self) -> int:
        own = {key: f for key, f in self.model.functions.items() if f.domain == spec.DOMAIN}
        for key in own:
            del self.model.functions[key]
        try:
            return dropout_rule_set(self.ctx).apply_to_model(self.model)
        finally:
            for key, function in own.items():
                self.model.functions[key] = function

    def _remove_dead(self) -> None:
        """Remove nodes and initializers that only the replaced sites used."""
        work = list(self.ctx.dead_candidates)
        seen: set[int] = set()
        while work:
            value = work.pop()
            if id(value) in seen:
                continue
            if value.uses() or value.is_graph_output():
                continue
            seen.add(id(value))
            producer = value.producer()
            if producer is not None:
                if producer.graph is None:
                    continue  # already removed
                if any(o.uses() or o.is_graph_output() for o in producer.outputs):
                    continue
                if _subgraphs(producer):
                    continue
                inputs = [v for v in producer.inputs if v is not None]
                producer.graph.remove(producer, safe=True)
                work.extend(inputs)
            elif value.is_initializer() and not value.is_graph_input():
                graph = value.graph
                if graph is not None and value.name in graph.initializers:
                    del graph.initializers[value.name]

    # -- reporting ----------------------------------------------------------------

    def unconvertible(self) -> list[dict]:
        """Random ops still in the model after the rules ran, with the reason."""
        found = []
        for scope, path in self.scopes:
            for node in scope:
                if node.op_type not in _proto.RANDOM_OPS:
                    continue
                entry = self.ctx.failures.get(id(node))
                if entry is not None:
                    reason = entry[1]
                else:
                    consumers = sorted({c.op_type for o in node.outputs for c in o.consumers()})
                    reason = ("no rule matches the nodes around it (it feeds "
                              f"{', '.join(consumers) or 'nothing'})")
                given = self._given_names.get(id(node), "")
                found.append({
                    "name": given or (node.outputs[0].name if node.outputs else ""),
                    "kind": "unconvertible",
                    "op_type": node.op_type,
                    "ratio": None,
                    "shared_axes": None,
                    "graph": path,
                    "reason": reason,
                })
        return found
