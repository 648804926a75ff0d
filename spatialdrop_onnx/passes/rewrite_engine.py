"""The onnx_ir side of rewrite: facts per value, one anchored application of the rules, dead code.

Matching is *anchored*: every random-mask site contains a random op and every
existing dropout is one node, so the rules (:mod:`.rules`, onnxscript patterns)
are tried only at those anchors — at the node itself, or at nodes a few steps
downstream of a random op, nearest first, with only the rules that can end
there. The cost grows with the sites, not with nodes × rules. The shape
reasoning reads the noise-shape expression itself (:mod:`.shapes`), so no site
waits for another to be converted first and no re-inference is needed.
New dropout nodes read a placeholder value named ``training_mode`` per top scope
(main graph or function); :func:`spatialdrop_onnx.graph.thread_training_switch`
defines it on the serialized model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from .. import spec
from ..graph import (
    MAIN_KEY,
    RANDOM_OPS,
    TRAINING_MODE,
    NameMaker,
    Scope,
    ScopeKey,
    ScopesDisagree,
    TypeFacts,
    all_names,
    check_same_scopes,
    function_key,
    function_path,
    model_scopes,
    subgraph_key,
    subgraph_path,
    type_facts,
)
from ..sites import Kind, Site
from .rule_set import dropout_rules
from .rules._common import RewriteContext
from .shapes import ShapeReasoner


def _subgraphs(node: ir.Node) -> Iterator[tuple[str, int, ir.Graph]]:
    """(attribute name, position in it, graph) of every graph a node holds (If/Loop/Scan)."""
    for attr in node.attributes.values():
        if not isinstance(attr, ir.Attr):  # a reference to a function's attribute
            continue
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.name, 0, attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            for index, graph in enumerate(attr.as_graphs()):
                yield attr.name, index, graph


class RewriteEngine:
    """One application of the rule set to one ``ir.Model``, in place."""

    def __init__(self, model: ir.Model, proto: onnx.ModelProto, *, elementwise: str,
                 read_external: Callable[[ir.Tensor], np.ndarray | None] | None = None,
                 whole: onnx.ModelProto | None = None, facts: TypeFacts | None = None) -> None:
        """``model`` is ``proto`` in onnx_ir form; ``whole`` the model ``proto`` is a region
        of (its names, declared dims and type facts hold for the region's values);
        ``facts`` the type facts of ``proto`` or ``whole`` (``whole``'s, made lazily, when
        None)."""
        whole = proto if whole is None else whole
        self.facts = type_facts(whole) if facts is None else facts
        self.model = model
        self.paths: dict[int, str] = {}
        self.owners: dict[int, ir.Function | None] = {}
        #: (scope, path) parents first, as ``graph.model_scopes`` (our own bodies skipped).
        self.scopes: list[tuple[ir.Graph | ir.Function, str]] = []
        self.keys: dict[int, ScopeKey] = {}  # id of a scope -> its key (graph.scopes)
        self._index()
        shapes = ShapeReasoner(self._value_facts(proto, whole, self.facts), read_external)
        self.ctx = RewriteContext(model, shapes, self.paths, self.owners, self._training_value,
                                  NameMaker(all_names(whole)), elementwise=elementwise)
        self._training: dict[int | None, ir.Value] = {}
        # Names as the input model has them (the rewriter names unnamed nodes).
        self._given_names = {id(n): n.name or "" for scope, _ in self.scopes for n in scope}

    # -- indexing -------------------------------------------------------------------

    def _index(self) -> None:
        """Every scope with its path, owner and key, found by onnx_ir's own traversal."""
        self._index_tree(self.model.graph, MAIN_KEY, "main", None)
        for function in self.model.functions.values():
            if function.domain != spec.DOMAIN:  # our own function bodies are never rewritten
                identifier = function.identifier()
                self._index_tree(function, function_key(*identifier),
                                 function_path(*identifier), function)

    def _index_tree(self, top: ir.Graph | ir.Function, key: ScopeKey, path: str,
                    owner: ir.Function | None) -> None:
        """Index ``top`` and its subgraphs (onnx_ir lists them parents first), each labelled
        from the node holding it as ``graph.model_scopes`` labels it (``graph.scopes``)."""
        labels = {id(top): (key, path)}
        graphs = self.model.graphs() if owner is None else [top, *top.subgraphs()]
        for graph in graphs:
            found = labels.get(id(graph))
            if found is None:
                raise ScopesDisagree(f"internal error: onnx_ir lists a subgraph of {path} "
                                     "that no node of it holds")
            self.keys[id(graph)], graph_path = found
            self.paths[id(graph)] = graph_path
            self.owners[id(graph)] = owner
            self.scopes.append((graph, graph_path))
            for position, node in enumerate(graph):
                if node.attributes:  # most nodes have none: no subgraph to label
                    for attr_name, index, sub in _subgraphs(node):
                        labels[id(sub)] = (
                            subgraph_key(found[0], position, attr_name, index),
                            subgraph_path(graph_path, node.name, node.op_type, attr_name))
        if owner is not None:  # nodes of a function belong to its graph
            self.paths[id(top.graph)], self.owners[id(top.graph)] = path, owner

    def _value_facts(self, proto: onnx.ModelProto, whole: onnx.ModelProto, facts: TypeFacts
                     ) -> Callable[[ir.Value], tuple[int | str | None, ...] | None]:
        """Per-scope type facts for this model's IR values, each scope found by its key.

        ``facts`` describe ``proto`` or ``whole`` (a region's scopes have the keys they
        have in the whole model). A scope the two walks do not agree on is an error, not
        a scope without facts. Lookups are lazy: a value is looked up (and inference run,
        once) only when the shape reasoning cannot answer from the graph itself.
        """
        ir_keys = [self.keys[id(scope)] for scope, _ in self.scopes]
        check_same_scopes(ir_keys, (s.key for s in model_scopes(proto)))
        declared = _declared_dim_params(whole)
        where: dict[int, Scope] = {}
        for (scope, _), key in zip(self.scopes, ir_keys, strict=True):
            proto_scope = facts.scope(key)
            if proto_scope is None:
                raise ScopesDisagree(f"internal error: the type facts have no scope {key}")
            values: list[ir.Value] = list(scope.inputs)
            if isinstance(scope, ir.Graph):
                values.extend(scope.initializers.values())
            values.extend(out for node in scope for out in node.outputs)
            for value in values:
                where[id(value)] = proto_scope

        def lookup(value: ir.Value) -> tuple[int | str | None, ...] | None:
            scope = where.get(id(value))
            found = None if scope is None else facts.type_of(scope, value.name or "")
            if found is None or found.dims is None:
                return None
            # Names inference invents (unk__N) say nothing: only declared names count.
            return tuple(d if not isinstance(d, str) or d in declared else None
                         for d in found.dims)

        return lookup

    # -- the training switch ----------------------------------------------------------

    def _training_value(self, owner: ir.Function | None) -> ir.Value:
        key = None if owner is None else id(owner)
        value = self._training.get(key)
        if value is None:
            inputs = self.model.graph.inputs if owner is None else owner.inputs
            value = next((v for v in inputs if v.name == TRAINING_MODE), None)
            if value is None:
                # A placeholder: graph.thread_training_switch defines it after serialization.
                value = ir.Value(name=TRAINING_MODE, type=ir.TensorType(ir.DataType.BOOL),
                                 shape=ir.Shape([]))
            self._training[key] = value
        return value

    # -- running --------------------------------------------------------------------

    #: How far below a random op a site's last node may be (Keras' lowered select: 5).
    MAX_SITE_DEPTH = 8

    def run(self) -> None:
        """Try the rules at every anchor once, then remove what only the sites used.

        Rule by rule (most specific first), each at the anchor's candidates nearest
        first, until the anchor's site is converted (the anchor is gone or unread): a
        match further down may belong to the next site, which is then converted too,
        and the search goes on for this one.
        """
        index = dropout_rules(self.ctx)
        for scope, _ in self.scopes:
            anchors = [n for n in scope if n.op_type in index]
            for anchor in anchors:
                if not _alive(anchor):
                    continue  # removed by an earlier site's rewrite
                rules = index[anchor.op_type]
                roots = {root for root, _ in rules}
                candidates = list(self._candidates(anchor, roots))
                for root, variants in rules:
                    for candidate in candidates:
                        if candidate.op_type == root and self._try(candidate, variants) and \
                                not _alive(anchor):
                            break
                    if not _alive(anchor):
                        break
        self._remove_dead()

    def _candidates(self, anchor: ir.Node, roots: set[str]) -> Iterator[ir.Node]:
        """The anchor and the nodes below it in its graph (breadth first) a rule can end at."""
        graph = anchor.graph
        frontier, seen, depth = [anchor], {id(anchor)}, 0
        while frontier and depth <= self.MAX_SITE_DEPTH:
            following = []
            for node in frontier:
                if node.graph is not graph:
                    continue
                if node.op_type in roots:
                    yield node
                for output in node.outputs:
                    for consumer in output.consumers():
                        if id(consumer) not in seen:
                            seen.add(id(consumer))
                            following.append(consumer)
            frontier, depth = following, depth + 1

    def _try(self, node: ir.Node, variants: list) -> bool:
        """Try rule variants at ``node`` in order; apply the first that matches."""
        graph = node.graph
        if graph is None:
            return False
        for rule in variants:
            delta = rule.try_rewrite(self.model, graph, node)
            if delta is None:
                continue
            ir.convenience.replace_nodes_and_values(
                graph, node, delta.match.nodes if rule.remove_nodes else [],
                delta.new_nodes, delta.match.outputs, delta.new_outputs)
            return True
        return False

    def _remove_dead(self) -> None:
        """Remove nodes and initializers that only the replaced sites used.

        Values without a producer (initializers, often shared by every site: the
        threshold, the noise-shape constants) are checked once, at the end: asking a
        value for its uses costs as many uses as it has.
        """
        work = list(self.ctx.dead_candidates)
        seen: set[int] = set()
        unproduced: dict[int, ir.Value] = {}
        while work:
            value = work.pop()
            producer = value.producer()
            if producer is None:
                unproduced[id(value)] = value
                continue
            if id(value) in seen or value.uses() or value.is_graph_output():
                continue
            seen.add(id(value))
            if producer.graph is None:
                continue  # already removed
            if any(o.uses() or o.is_graph_output() for o in producer.outputs):
                continue
            if next(_subgraphs(producer), None) is not None:
                continue
            inputs = [v for v in producer.inputs if v is not None]
            producer.graph.remove(producer, safe=True)
            work.extend(inputs)
        for value in unproduced.values():
            if value.is_initializer() and not value.is_graph_input() and \
                    not value.is_graph_output() and not value.uses():
                graph = value.graph
                if graph is not None and value.name in graph.initializers:
                    del graph.initializers[value.name]

    # -- reporting ------------------------------------------------------------------

    @property
    def converted(self) -> list[Site]:
        return [c.site(self.ctx.elementwise) for c in self.ctx.conversions]

    @property
    def rewired(self) -> list[Site]:
        return list(self.ctx.rewired)

    def unconvertible(self) -> list[Site]:
        """Random ops still in the model after the rules ran, with the reason."""
        found = []
        for scope, path in self.scopes:
            for node in scope:
                if node.op_type not in RANDOM_OPS:
                    continue
                entry = self.ctx.failures.get(id(node))
                if entry is not None:
                    reason = entry[1]
                else:
                    consumers = sorted({c.op_type for o in node.outputs for c in o.consumers()})
                    reason = ("no rule matches the nodes around it (it feeds "
                              f"{', '.join(consumers) or 'nothing'})")
                given = self._given_names.get(id(node), "")
                found.append(Site(
                    name=given or (node.outputs[0].name if node.outputs else "") or "",
                    kind=Kind.UNCONVERTIBLE, graph=path, op_type=node.op_type, reason=reason))
        return found


def _alive(anchor: ir.Node) -> bool:
    """Whether an anchor still stands for an unconverted site: in its graph and read.

    A dropout node anchors its own (rewired) replacement, which has outputs and readers
    of its own: it is alive while it is still in the graph."""
    if anchor.graph is None:
        return False
    if anchor.op_type in RANDOM_OPS:
        return any(output.uses() for output in anchor.outputs)
    return True


def _declared_dim_params(model: onnx.ModelProto) -> set[str]:
    params: set[str] = set()
    for scope in model_scopes(model):
        graph = scope.graph
        infos = [] if graph is None else [*graph.input, *graph.output, *graph.value_info]
        if scope.function is not None and graph is None:
            infos = list(scope.function.value_info)
        for info in infos:
            for dim in info.type.tensor_type.shape.dim:
                if dim.dim_param:
                    params.add(dim.dim_param)
    return params
