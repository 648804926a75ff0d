"""Scopes: every node container of a model (graph, subgraphs, functions) as one record.

A scope is named two ways, both declared here and computed the same way by the
protobuf walk (:func:`model_scopes`) and the onnx_ir one (``passes.rewrite_engine``):
its :data:`ScopeKey` (where it sits: unique, the key of facts handed across the seam)
and its path (what messages and reports show).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import onnx
from onnx import FunctionProto, GraphProto, NodeProto

from .. import spec
from .nodes import default_opset, subgraphs

#: Where a scope sits in its model: its top — ``"main"``, or a model-local function's
#: ``(domain, name, overload)`` — then one ``(node position, attribute name, graph
#: position)`` step per level of If/Loop/Scan body. Unique, unlike the path.
ScopeKey = tuple
MAIN_KEY: ScopeKey = ("main",)


def function_key(domain: str, name: str, overload: str) -> ScopeKey:
    return ((domain, name, overload),)


def subgraph_key(parent: ScopeKey, position: int, attribute: str, index: int) -> ScopeKey:
    """The key of graph ``index`` of attribute ``attribute`` of node ``position`` of ``parent``."""
    return (*parent, (position, attribute, index))


def subgraph_path(parent: str, node_name: str, op_type: str, attribute: str) -> str:
    return f"{parent}/{node_name or op_type}/{attribute}"


class ScopesDisagree(RuntimeError):
    """Two walks of one model found different scopes: a bug here, never the user's model."""


def check_same_scopes(walked: Iterable[ScopeKey], expected: Iterable[ScopeKey]) -> None:
    """Raise :class:`ScopesDisagree` unless both walks found the same scopes."""
    walked, expected = set(walked), set(expected)
    if walked != expected:
        raise ScopesDisagree(
            "internal error: the onnx_ir and protobuf walks of the model found different "
            f"scopes (only onnx_ir: {sorted(map(str, walked - expected))[:3]}; only protobuf: "
            f"{sorted(map(str, expected - walked))[:3]})")


@dataclass(eq=False)
class Scope:
    """One node container: the main graph, a subgraph, or a function body.

    ``function`` is the model-local function the scope belongs to (None in the
    main graph and its subgraphs); ``parent`` the scope whose names it can see.
    """

    nodes: object  # RepeatedCompositeFieldContainer[NodeProto]
    path: str
    graph: GraphProto | None
    function: FunctionProto | None
    opset: int
    parent: Scope | None = None
    index: int = 0  # position in this model_scopes() list (tables of one walk)
    key: ScopeKey = MAIN_KEY  # where it sits (facts across walks and dialects)
    children: list[Scope] = field(default_factory=list)

    @property
    def top(self) -> Scope:
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope

    @property
    def output_names(self) -> list[str]:
        if self.graph is not None:
            return [o.name for o in self.graph.output]
        assert self.function is not None
        return list(self.function.output)

    @property
    def input_names(self) -> list[str]:
        if self.graph is not None:
            return [i.name for i in self.graph.input]
        assert self.function is not None
        return list(self.function.input)

    def descendants(self) -> Iterator[Scope]:
        """This scope and every scope nested in it, parents first."""
        yield self
        for child in self.children:
            yield from child.descendants()


def function_path(domain: str, name: str, overload: str) -> str:
    return f"function {domain}.{name}" + (f":{overload}" if overload else "")


def _walk_children(scope: Scope, found: list[Scope]) -> None:
    for position, node in enumerate(scope.nodes):
        if not node.attribute:  # most nodes: skip the attribute scan
            continue
        previous, index = "", 0
        for attr, sub in subgraphs(node):
            index = index + 1 if attr.name == previous else 0
            previous = attr.name
            child = Scope(sub.node, subgraph_path(scope.path, node.name, node.op_type, attr.name),
                          sub, scope.function, scope.opset, scope, len(found),
                          subgraph_key(scope.key, position, attr.name, index))
            found.append(child)
            scope.children.append(child)
            _walk_children(child, found)


# Models whose scopes are computed once while a caller promises not to change them
# (unchanged_scopes): id -> (the model, kept so the id stays its own; scopes per flag).
_UNCHANGED: ContextVar[dict[int, tuple[onnx.ModelProto, dict[bool, list[Scope]]]] | None] = \
    ContextVar("spatialdrop_unchanged_scopes", default=None)


@contextmanager
def unchanged_scopes(model: onnx.ModelProto) -> Iterator[None]:
    """Inside the block, :func:`model_scopes` of ``model`` is walked once and shared.

    Walking a model costs about 0.5 µs per node (every node's attributes are looked
    at for subgraphs), and one rewrite asks for the scopes of its input a dozen times.
    The caller promises not to add, remove or replace ``model``'s nodes or functions
    inside the block (it may read them, and copy the model).
    """
    outer = _UNCHANGED.get() or {}
    known = outer.get(id(model))
    entry = known if known is not None and known[0] is model else (model, {})
    token = _UNCHANGED.set({**outer, id(model): entry})
    try:
        yield
    finally:
        _UNCHANGED.reset(token)


def model_scopes(model: onnx.ModelProto, *, include_ours: bool = False) -> list[Scope]:
    """Every scope of ``model``, parents before children: the main graph tree, then each
    model-local function's tree.

    The SpatialDropout function bodies ``make_portable`` attaches are skipped
    unless ``include_ours``: there is nothing in them to rewrite, strip or report.
    """
    unchanged = (_UNCHANGED.get() or {}).get(id(model))
    if unchanged is None or unchanged[0] is not model:
        return _walk_model(model, include_ours)
    walked = unchanged[1]
    if include_ours not in walked:
        walked[include_ours] = _walk_model(model, include_ours)
    return list(walked[include_ours])


def _walk_model(model: onnx.ModelProto, include_ours: bool) -> list[Scope]:
    opset = default_opset(model.opset_import)
    found = [Scope(model.graph.node, "main", model.graph, None, opset)]
    _walk_children(found[0], found)
    for function in model.functions:
        if function.domain == spec.DOMAIN and not include_ours:
            continue
        fopset = default_opset(function.opset_import) or opset
        identifier = (function.domain, function.name, function.overload)
        scope = Scope(function.node, function_path(*identifier), None, function, fopset, None,
                      len(found), function_key(*identifier))
        found.append(scope)
        _walk_children(scope, found)
    return found


def top_scopes(scopes: list[Scope]) -> list[Scope]:
    return [s for s in scopes if s.parent is None]


def iter_nodes(model: onnx.ModelProto, *, include_ours: bool = False
               ) -> Iterator[tuple[Scope, NodeProto]]:
    """Every node of every scope, with its scope."""
    for scope in model_scopes(model, include_ours=include_ours):
        for node in scope.nodes:
            yield scope, node
