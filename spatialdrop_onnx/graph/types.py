"""Types per scope: what the model declares, completed by onnx shape inference (isolated)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import FunctionProto, TensorProto

from ..errors import UserError
from ..isolation import in_forked_child, run_isolated
from .constants import constant_tensor, holds_values
from .scopes import MAIN_KEY, Scope, ScopeKey, model_scopes

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
        self._by_key: dict[ScopeKey, Scope] | None = None

    def scope(self, key: ScopeKey) -> Scope | None:
        """The scope at ``key`` of the model these facts describe (None: it has none there)."""
        if self._by_key is None:
            self._by_key = {}
            for scope in self._scopes:
                self._by_key.setdefault(scope.key, scope)
        return self._by_key.get(key)

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
        # A declared rank is enough: unknown dimensions need no inference here.
        declared = self._lookup(self._per_scope, scope, name)
        if declared is not None and declared.dims is not None:
            return len(declared.dims)
        found = self.type_of(scope, name)
        return None if found is None or found.dims is None else len(found.dims)

    def elem_type_of(self, scope: Scope, name: str) -> int:
        declared = self._lookup(self._per_scope, scope, name)
        if declared is not None and declared.elem_type != TensorProto.UNDEFINED:
            return declared.elem_type
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


def _complete(scopes: list[Scope], per_scope: list[dict[str, ValueType]],
              inferred: list[Scope], key_there: Callable[[ScopeKey], ScopeKey]) -> None:
    """Add what ``inferred`` (scopes of an inferred copy) declares to ``scopes``' tables,
    each scope taking the facts of the scope at ``key_there(scope.key)``."""
    theirs = {s.key: s for s in inferred}
    for mine in scopes:
        there = theirs.get(key_there(mine.key))
        if there is not None:
            table = per_scope[mine.index]
            for name, found in _declared_types(there).items():
                table.setdefault(name, found)


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
        _complete(scopes, per_scope, model_scopes(inferred), lambda key: key)
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
            # The body is the synthetic model's main graph: same steps below the top.
            _complete([s for s in scopes if s.top is top], per_scope, model_scopes(synthetic),
                      lambda key: (*MAIN_KEY, *key[1:]))
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

    from ..schema import register_schema

    register_schema()  # inference follows values through SpatialDropout only with its schema
    try:
        return run_isolated(compute, model, what="inferring shapes")
    except UserError:  # onnx crashed on this model: what it declares is all we know
        return [_declared_types(s) for s in scopes]
