"""Constants: small known values, read only from inline data, looked up per scope."""

from __future__ import annotations

import onnx
from onnx import AttributeProto, NodeProto, TensorProto

from .nodes import DEFAULT_DOMAINS
from .scopes import Scope

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
