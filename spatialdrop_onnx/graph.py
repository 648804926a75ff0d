"""The protobuf dialect every layer shares: scopes, names, opsets, constants, types, the switch.

Passes that must be fast on huge graphs (strip, inspect, the function bodies)
work on ``onnx.ModelProto`` directly; this module is their one vocabulary:

* :func:`model_scopes` walks every node container — the main graph, If/Loop/Scan
  bodies at any depth, model-local functions and their subgraphs — as
  :class:`Scope` records (path for messages, owning function, opset, parent);
* :class:`NameMaker` hands out names that collide with nothing in the model;
* :class:`Constants` answers "is this name a small known constant here?";
* :func:`infer_types` runs onnx shape inference (isolated: it can abort on
  malformed models) and keeps the facts **per scope**, so a value inside a
  function never takes the type of a same-named value of the main graph;
* the ``training_mode`` switch: :func:`thread_training_switch` defines it
  wherever a node reads it (graph input with a default; function input passed on
  by every call site), :func:`drop_unused_training_switch` undoes that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, GraphProto, NodeProto, TensorProto

from . import spec
from .errors import UserError, printable
from .isolation import in_forked_child, run_isolated

DEFAULT_DOMAINS = ("", "ai.onnx")
#: The boolean scalar that switches every dropout of a rewritten model.
TRAINING_MODE = "training_mode"
#: Random ops of the ONNX and TensorFlow vocabularies.
RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike",
    "Bernoulli", "Multinomial",
    "StatelessRandomUniformV2", "StatelessRandomUniform", "RandomUniformInt",
    "StatelessRandomNormalV2", "StatelessTruncatedNormalV2", "RandomStandardNormal",
    "StatelessRandomUniformIntV2", "StatelessRandomUniformFullIntV2",
})
#: Constants larger than this are never materialised to answer a question about them.
MAX_CONSTANT_ELEMENTS = 64


# --- Nodes ---------------------------------------------------------------------------


def is_default_domain(domain: str) -> bool:
    return domain in DEFAULT_DOMAINS


def is_onnx_dropout(node: NodeProto) -> bool:
    return node.op_type == "Dropout" and node.domain in DEFAULT_DOMAINS


def is_spatial_dropout(node: NodeProto) -> bool:
    return node.op_type == spec.OP_TYPE and node.domain == spec.DOMAIN


def is_random(node: NodeProto) -> bool:
    return node.op_type in RANDOM_OPS


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


def input_at(node: NodeProto, index: int) -> str:
    """Input ``index`` of ``node``, or "" when it is omitted."""
    return node.input[index] if len(node.input) > index else ""


# --- Opsets --------------------------------------------------------------------------


def default_opset(opset_imports: Iterable[onnx.OperatorSetIdProto]) -> int:
    """The default-domain opset version of these imports (0 if none)."""
    return next((o.version for o in opset_imports if o.domain in DEFAULT_DOMAINS), 0)


def check_opset_imports(model: onnx.ModelProto) -> None:
    """Refuse models that import the default domain twice (the version would be ambiguous)."""
    for owner, label in [(model, "the model"),
                         *((f, f"function {printable(f.name)}") for f in model.functions)]:
        defaults = [o for o in owner.opset_import if o.domain in DEFAULT_DOMAINS]
        if len(defaults) > 1:
            versions = ", ".join(f"{printable(o.domain) or '(empty)'}:{o.version}"
                                 for o in defaults)
            raise UserError(f"{label} imports the default ONNX domain {len(defaults)} times "
                            f"({versions}); keep one import")


# --- Scopes --------------------------------------------------------------------------


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
    index: int = 0  # position in model_scopes(): the key of per-scope facts
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


def function_path(function: FunctionProto) -> str:
    overload = f":{function.overload}" if function.overload else ""
    return f"function {function.domain}.{function.name}{overload}"


def _walk_graph(graph: GraphProto, path: str, function: FunctionProto | None, opset: int,
                parent: Scope | None, found: list[Scope]) -> Scope:
    scope = Scope(graph.node, path, graph, function, opset, parent, len(found))
    found.append(scope)
    _walk_children(scope, found)
    return scope


def _walk_children(scope: Scope, found: list[Scope]) -> None:
    for node in scope.nodes:
        if not node.attribute:  # most nodes: skip the attribute scan
            continue
        for attr, sub in subgraphs(node):
            label = node.name or node.op_type
            scope.children.append(_walk_graph(sub, f"{scope.path}/{label}/{attr.name}",
                                              scope.function, scope.opset, scope, found))


def model_scopes(model: onnx.ModelProto, *, include_ours: bool = False) -> list[Scope]:
    """Every scope of ``model``, parents before children: the main graph tree, then each
    model-local function's tree.

    The SpatialDropout function bodies ``make_portable`` attaches are skipped
    unless ``include_ours``: there is nothing in them to rewrite, strip or report.
    """
    opset = default_opset(model.opset_import)
    found: list[Scope] = []
    _walk_graph(model.graph, "main", None, opset, None, found)
    for function in model.functions:
        if function.domain == spec.DOMAIN and not include_ours:
            continue
        fopset = default_opset(function.opset_import) or opset
        scope = Scope(function.node, function_path(function), None, function, fopset, None,
                      len(found))
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


# --- Names ---------------------------------------------------------------------------


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


# --- Constants -----------------------------------------------------------------------


_VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                 "double_data", "uint64_data")


def holds_values(tensor: TensorProto) -> bool:
    """True if ``tensor``'s values are stored in it: not external data, and not a tensor
    with elements but no data field (a skeleton placeholder, see ``modelio.skeleton``)."""
    if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
        return False
    if tensor.HasField("raw_data") or any(len(getattr(tensor, name)) for name in
                                          _VALUE_FIELDS[1:]):
        return True
    return any(dim == 0 for dim in tensor.dims)


def scalar_of(tensor: TensorProto | None) -> float | int | bool | None:
    """The value of a one-element tensor stored in the model, or None."""
    if tensor is None or not holds_values(tensor):  # external data, or a placeholder
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    if count != 1:
        return None
    try:
        return onnx.numpy_helper.to_array(tensor).reshape(()).item()
    except (ValueError, TypeError):
        return None


def constant_tensor(node: NodeProto) -> TensorProto | None:
    """The tensor a default-domain ``Constant`` node produces, if it is stored inline."""
    if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS or not node.output:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            external = attr.t.data_location == TensorProto.EXTERNAL or attr.t.external_data
            return None if external else attr.t
        kinds = {"value_float": (TensorProto.FLOAT, "f"), "value_int": (TensorProto.INT64, "i")}
        if attr.name in kinds:
            dtype, field_name = kinds[attr.name]
            return onnx.helper.make_tensor(node.output[0], dtype, [],
                                           [getattr(attr, field_name)])
    return None


class Constants:
    """Names with a known inline constant value, resolved through enclosing scopes.

    Main-graph initializers that are also graph inputs can be overridden at run
    time and do not count; tensors in external data are never read here.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        inputs = {i.name for i in model.graph.input}
        self._initializers = {
            i.name: i for i in model.graph.initializer
            if i.name not in inputs and i.data_location != TensorProto.EXTERNAL
            and not i.external_data}
        self._per_scope: dict[int, dict[str, TensorProto]] = {}

    def _local(self, scope: Scope) -> dict[str, TensorProto]:
        table = self._per_scope.get(scope.index)
        if table is None:
            table = {}
            for node in scope.nodes:
                tensor = constant_tensor(node)
                if tensor is not None:
                    table[node.output[0]] = tensor
            if scope.graph is not None and scope.parent is not None:
                inputs = {i.name for i in scope.graph.input}
                table.update({i.name: i for i in scope.graph.initializer
                              if i.name not in inputs and not i.external_data})
            self._per_scope[scope.index] = table
        return table

    def get(self, scope: Scope, name: str) -> TensorProto | None:
        current: Scope | None = scope
        while current is not None:
            found = self._local(current).get(name)
            if found is not None:
                return found
            if current.parent is None and current.function is None:
                return self._initializers.get(name)
            if current.input_names and name in current.input_names:
                return None  # shadowed by an input of this scope
            current = current.parent
        return None

    def scalar(self, scope: Scope, name: str) -> float | int | bool | None:
        return scalar_of(self.get(scope, name)) if name else None


# --- Types ---------------------------------------------------------------------------

Dims = tuple[int | str | None, ...]


@dataclass(frozen=True)
class ValueType:
    """What shape inference (or the model) says about one value."""

    elem_type: int
    dims: Dims | None  # None: rank unknown


class TypeFacts:
    """Types of values per scope; lookups walk up to enclosing scopes (never across functions).

    What the model declares is read up front (cheap). With ``model`` given, the
    first lookup that misses runs :func:`infer_types` once and consults its
    answers too, so models that declare their types never pay for inference.
    """

    def __init__(self, scopes: list[Scope], per_scope: list[dict[str, ValueType]],
                 model: onnx.ModelProto | None = None) -> None:
        self._scopes = scopes
        self._per_scope = per_scope
        self._model = model  # inferred from on the first miss, then dropped
        self._inferred: list[dict[str, ValueType]] | None = None

    @classmethod
    def empty(cls) -> TypeFacts:
        return cls([], [])

    def _lookup(self, tables: list[dict[str, ValueType]], scope: Scope,
                name: str) -> ValueType | None:
        current: Scope | None = scope
        while current is not None:
            if current.index < len(tables):
                found = tables[current.index].get(name)
                if found is not None:
                    return found
            current = current.parent
        return None

    def type_of(self, scope: Scope, name: str) -> ValueType | None:
        found = self._lookup(self._per_scope, scope, name)
        if found is not None and found.dims is not None and None not in found.dims:
            return found
        if self._model is not None:
            self._inferred = _inferred_tables(self._model, self._scopes)
            self._model = None
        if self._inferred is not None:
            better = self._lookup(self._inferred, scope, name)
            if better is not None and (found is None or found.dims is None or (
                    better.dims is not None and better.dims.count(None) < found.dims.count(None))):
                return better
        return found

    def rank_of(self, scope: Scope, name: str) -> int | None:
        found = self.type_of(scope, name)
        return None if found is None or found.dims is None else len(found.dims)

    def elem_type_of(self, scope: Scope, name: str) -> int:
        found = self.type_of(scope, name)
        return TensorProto.UNDEFINED if found is None else found.elem_type

    def scope_types(self, index: int) -> dict[str, ValueType]:
        return self._per_scope[index] if index < len(self._per_scope) else {}


def _value_type(type_proto: onnx.TypeProto) -> ValueType | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return ValueType(tensor.elem_type, None)
    dims: list[int | str | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return ValueType(tensor.elem_type, tuple(dims))


def _declared_types(scope: Scope) -> dict[str, ValueType]:
    types: dict[str, ValueType] = {}
    graph = scope.graph
    if graph is not None:
        for info in [*graph.input, *graph.value_info, *graph.output]:
            found = _value_type(info.type)
            if found is not None:
                types[info.name] = found
        for init in graph.initializer:
            types[init.name] = ValueType(init.data_type, tuple(int(d) for d in init.dims))
    elif scope.function is not None:
        for info in scope.function.value_info:
            found = _value_type(info.type)
            if found is not None:
                types[info.name] = found
    for node in scope.nodes:
        tensor = constant_tensor(node)
        if tensor is not None:
            types[node.output[0]] = ValueType(tensor.data_type,
                                              tuple(int(d) for d in tensor.dims))
    return types


def declared_types(model: onnx.ModelProto) -> TypeFacts:
    """Only what the model itself declares (no inference): cheap."""
    scopes = model_scopes(model)
    return TypeFacts(scopes, [_declared_types(s) for s in scopes])


def type_facts(model: onnx.ModelProto) -> TypeFacts:
    """What the model declares, completed by shape inference on the first lookup that misses.

    ``model`` must not change between this call and that lookup.
    """
    scopes = model_scopes(model)
    return TypeFacts(scopes, [_declared_types(s) for s in scopes], model)


#: Initializers above this many bytes are handed to shape inference as typed inputs only.
_BIG_TENSOR_BYTES = 1024


def skeleton_in_place(model: onnx.ModelProto) -> None:
    """Drop large, external and placeholder initializer data (kept as typed inputs):
    inference needs their types, not their values. Only ever called on a throw-away copy."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    kept = []
    for init in graph.initializer:
        if not holds_values(init) or init.ByteSize() > _BIG_TENSOR_BYTES:
            if init.name not in inputs:
                graph.input.append(onnx.helper.make_tensor_value_info(
                    init.name, init.data_type, list(init.dims)))
        else:
            kept.append(init)
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    # No data propagation: it materialises element values, and a broadcast against a large
    # weight made it allocate gigabytes (the noise shapes are evaluated in passes.shapes).
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                             data_prop=False)


def _function_model(model: onnx.ModelProto, function: FunctionProto,
                    input_types: list[ValueType | None]) -> onnx.ModelProto:
    """A model whose graph is ``function``'s body, inputs typed as its call sites agree."""
    inputs = []
    for name, found in zip(function.input, input_types, strict=True):
        if found is None:
            inputs.append(onnx.helper.make_value_info(name, onnx.TypeProto()))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(
                name, found.elem_type, None if found.dims is None else list(found.dims)))
    graph = onnx.helper.make_graph(list(function.node), function.name, inputs,
                                   [onnx.helper.make_value_info(o, onnx.TypeProto())
                                    for o in function.output])
    imports = {o.domain: o for o in model.opset_import}
    imports.update({o.domain: o for o in function.opset_import})
    synthetic = onnx.helper.make_model(graph, opset_imports=list(imports.values()))
    synthetic.ir_version = model.ir_version
    synthetic.functions.extend(model.functions)
    return synthetic


def _call_site_types(scopes: list[Scope], per_scope: list[dict[str, ValueType]],
                     function: FunctionProto) -> list[ValueType | None] | None:
    """Input types of ``function`` that every call site agrees on (None: never called)."""
    key = (function.domain, function.name, function.overload)
    agreed: list[ValueType | None] | None = None
    facts = TypeFacts(scopes, per_scope)
    for scope in scopes:
        for node in scope.nodes:
            if (node.domain, node.op_type, node.overload) != key:
                continue
            seen = [facts.type_of(scope, name) if name else None
                    for name in list(node.input)[: len(function.input)]]
            seen += [None] * (len(function.input) - len(seen))
            if agreed is None:
                agreed = seen
            else:
                agreed = [a if a == b else None for a, b in zip(agreed, seen, strict=True)]
    return agreed


def _infer_facts(model: onnx.ModelProto) -> list[dict[str, ValueType]]:
    """Per-scope types (model_scopes order): declared, completed by shape inference."""
    skeleton_in_place(model)
    scopes = model_scopes(model)
    per_scope = [_declared_types(s) for s in scopes]
    try:
        inferred = _infer(model)
    except Exception:  # noqa: BLE001 - inference is a best effort: declared types stay
        inferred = None
    if inferred is not None:
        inferred_scopes = model_scopes(inferred)
        if len(inferred_scopes) == len(scopes):
            for mine, theirs in zip(per_scope, inferred_scopes, strict=True):
                for name, found in _declared_types(theirs).items():
                    mine.setdefault(name, found)
    # Functions are typed per call: infer each body with the types its call sites agree on.
    done: set[int] = set()
    for _ in range(len(model.functions)):
        progress = False
        for top in (s for s in scopes if s.parent is None and s.function is not None):
            function = top.function
            assert function is not None
            if top.index in done:
                continue
            agreed = _call_site_types(scopes, per_scope, function)
            if agreed is None:
                continue
            done.add(top.index)
            progress = True
            try:
                synthetic = _infer(_function_model(model, function, agreed))
            except Exception:  # noqa: BLE001 - best effort, as above
                continue
            body_scopes = [s for s in scopes if s.top is top]
            synthetic_scopes = model_scopes(synthetic)[: len(body_scopes)]
            for mine, theirs in zip(body_scopes, synthetic_scopes, strict=False):
                for name, found in _declared_types(theirs).items():
                    per_scope[mine.index].setdefault(name, found)
        if not progress:
            break
    return per_scope


def infer_types(model: onnx.ModelProto) -> TypeFacts:
    """Per-scope value types from the model's declarations and onnx shape inference, now."""
    scopes = model_scopes(model)
    return TypeFacts(scopes, _inferred_tables(model, scopes))


def _inferred_tables(model: onnx.ModelProto, scopes: list[Scope]) -> list[dict[str, ValueType]]:
    """Declared types completed by onnx shape inference, per scope.

    Inference runs on a copy without large initializer data, in a forked child
    (``isolation``), so a malformed model that makes onnx abort cannot take the
    process down; the facts are then what the model declares. The caller's model
    is never touched.
    """
    def compute(source: onnx.ModelProto) -> list[dict[str, ValueType]]:
        if not in_forked_child():  # a child owns its (copy-on-write) memory: no copy needed
            copy = onnx.ModelProto()
            copy.CopyFrom(source)
            source = copy
        return _infer_facts(source)

    try:
        return run_isolated(compute, model, what="inferring shapes")
    except UserError:  # onnx crashed on this model: what it declares is all we know
        return [_declared_types(s) for s in scopes]


# --- The training switch ----------------------------------------------------------------


def _reads(scope: Scope, name: str) -> bool:
    return any(name in node.input for s in scope.descendants() for node in s.nodes)


def _produced_names(scope: Scope) -> set[str]:
    return {out for s in scope.descendants() for node in s.nodes for out in node.output}


def _is_bool_scalar(info: onnx.ValueInfoProto) -> bool:
    tensor = info.type.tensor_type
    return (info.type.HasField("tensor_type") and tensor.elem_type == TensorProto.BOOL
            and tensor.HasField("shape") and len(tensor.shape.dim) == 0)


def check_training_switch_name(model: onnx.ModelProto) -> None:
    """Refuse a model whose own ``training_mode`` value could not serve as the switch.

    Only a boolean scalar main-graph input may already carry the name (it is then
    reused); anything else named ``training_mode`` would be silently captured.
    """
    graph = model.graph
    for info in graph.input:
        if info.name == TRAINING_MODE and not _is_bool_scalar(info):
            raise UserError(f"the model already has an input {TRAINING_MODE!r} that is not a "
                            "boolean scalar; rename it before adding the dropout switch")
    inputs = {i.name for i in graph.input}
    if TRAINING_MODE not in inputs and any(i.name == TRAINING_MODE for i in graph.initializer):
        raise UserError(f"the model already has an initializer named {TRAINING_MODE!r}; "
                        "rename it before adding the dropout switch")
    for scope in model_scopes(model):
        produced = {out for node in scope.nodes for out in node.output}
        if TRAINING_MODE in produced:
            raise UserError(f"the model already computes a value named {TRAINING_MODE!r} "
                            f"({printable(scope.path)}); rename it before adding the dropout "
                            "switch")
        if scope.parent is not None and TRAINING_MODE in scope.input_names:
            raise UserError(f"a subgraph ({printable(scope.path)}) has its own input "
                            f"{TRAINING_MODE!r}; "
                            "rename it before adding the dropout switch")


def _default_tensor(value: bool) -> TensorProto:
    return onnx.numpy_helper.from_array(np.array(bool(value)), TRAINING_MODE)


def set_training_default(model: onnx.ModelProto, value: bool) -> None:
    """Give the main-graph ``training_mode`` input the initializer default ``value``.

    Only a boolean scalar input is the switch; a model's own ``training_mode`` of
    another type or shape is left alone (a scalar default would make it invalid).
    """
    graph = model.graph
    flag = next((i for i in graph.input if i.name == TRAINING_MODE), None)
    if flag is None or not _is_bool_scalar(flag):
        return
    for init in graph.initializer:
        if init.name == TRAINING_MODE:
            init.CopyFrom(_default_tensor(value))
            return
    graph.initializer.append(_default_tensor(value))


def add_training_input(model: onnx.ModelProto, default: bool) -> None:
    """Add the boolean scalar input ``training_mode`` (default ``default``) if it is absent."""
    graph = model.graph
    if not any(i.name == TRAINING_MODE for i in graph.input):
        graph.input.append(onnx.helper.make_tensor_value_info(TRAINING_MODE,
                                                              TensorProto.BOOL, []))
    set_training_default(model, default)


def thread_training_switch(model: onnx.ModelProto, default: bool) -> None:
    """Define ``training_mode`` wherever a node reads it without a definition in scope.

    A model-local function gains a ``training_mode`` input (appended) and every
    call of it passes the caller's switch on, transitively; the main graph gets
    the boolean scalar input ``training_mode`` with the initializer default
    ``default``. Call :func:`check_training_switch_name` first.
    """
    changed = True
    while changed:
        changed = False
        scopes = model_scopes(model)
        for top in top_scopes(scopes):
            function = top.function
            if function is None or TRAINING_MODE in function.input:
                continue
            if _reads(top, TRAINING_MODE) and TRAINING_MODE not in _produced_names(top):
                function.input.append(TRAINING_MODE)
                _pass_switch_at_calls(scopes, function)
                changed = True
    main = model_scopes(model)[0]
    if _reads(main, TRAINING_MODE):
        add_training_input(model, default)


def _pass_switch_at_calls(scopes: list[Scope], function: FunctionProto) -> None:
    key = (function.domain, function.name, function.overload)
    position = list(function.input).index(TRAINING_MODE)
    for scope in scopes:
        for node in scope.nodes:
            if (node.domain, node.op_type, node.overload) != key:
                continue
            while len(node.input) < position:
                node.input.append("")
            if len(node.input) == position:
                node.input.append(TRAINING_MODE)
            else:
                node.input[position] = TRAINING_MODE


def drop_unused_training_switch(model: onnx.ModelProto) -> None:
    """Remove ``training_mode`` inputs nothing reads any more (functions, then the graph).

    A function input goes together with the argument at every call (repeated:
    an outer function may free its own in turn); then an unused boolean scalar
    graph input ``training_mode`` and its default.
    """
    changed = True
    while changed:
        changed = False
        scopes = model_scopes(model)
        for top in top_scopes(scopes):
            function = top.function
            if function is None or TRAINING_MODE not in function.input:
                continue
            if _reads(top, TRAINING_MODE):
                continue
            index = list(function.input).index(TRAINING_MODE)
            del function.input[index]
            key = (function.domain, function.name, function.overload)
            for scope in scopes:
                for node in scope.nodes:
                    if (node.domain, node.op_type, node.overload) == key and \
                            len(node.input) > index:
                        del node.input[index]
            changed = True
    graph = model.graph
    main = model_scopes(model)[0]
    flag = next((i for i in graph.input if i.name == TRAINING_MODE), None)
    if flag is None or not (_is_bool_scalar(flag) or not flag.type.tensor_type.HasField("shape")):
        return
    if _reads(main, TRAINING_MODE) or TRAINING_MODE in main.output_names:
        return
    kept = [i for i in graph.input if i.name != TRAINING_MODE]
    del graph.input[:]
    graph.input.extend(kept)
    kept_init = [i for i in graph.initializer if i.name != TRAINING_MODE]
    if len(kept_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept_init)


# --- Our domain ----------------------------------------------------------------------------


def import_our_domain(opset_imports) -> None:  # noqa: ANN001 - repeated OperatorSetIdProto
    """Add the SpatialDropout domain to these opset imports if it is missing."""
    if not any(o.domain == spec.DOMAIN for o in opset_imports):
        opset_imports.append(onnx.helper.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))


def drop_our_unused_functions(model: onnx.ModelProto) -> None:
    """Remove our function bodies nothing calls, then our opset imports if nothing uses them."""
    scopes = model_scopes(model)
    calls = {(n.domain, n.op_type, n.overload) for s in scopes for n in s.nodes}
    kept = [f for f in model.functions
            if f.domain != spec.DOMAIN or (f.domain, f.name, f.overload) in calls]
    if len(kept) != len(model.functions):
        del model.functions[:]
        model.functions.extend(kept)
    if any(n.domain == spec.DOMAIN for s in model_scopes(model, include_ours=True)
           for n in s.nodes):
        return
    for owner in [model, *model.functions]:
        kept_imports = [o for o in owner.opset_import if o.domain != spec.DOMAIN]
        if len(kept_imports) != len(owner.opset_import):
            del owner.opset_import[:]
            owner.opset_import.extend(kept_imports)
