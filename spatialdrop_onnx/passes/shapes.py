"""Shape reasoning for the rewrite rules: which noise dims are 1, which equal the data dims.

A dimension is described symbolically so two tensors' dims can be compared
without knowing the batch size:

* an ``int`` for a static size,
* a ``str`` for a ``dim_param`` (equal names mean equal sizes),
* a ``("dim", id, axis)`` token for an unnamed unknown dim of a tensor.

Dims flow through the ops exporters build noise shapes with (``Shape`` with
``start``/``end``, ``Cast``, ``Slice``, ``Gather``, ``Concat``,
``Unsqueeze``, ``Reshape``) and through the shape-preserving ops that sit
between a tensor and its dropout (``Transpose``, elementwise ops with a
broadcast scalar, ``ConstantOfShape``, ``*Like`` random ops). So the noise
shape ``Concat(Shape(model_input)[0:1], [8], [1], [1])`` is recognised as
``[batch, 8, 1, 1]`` for data of shape ``[batch, 8, H, W]``: names never matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

Dim = int | str | tuple
#: Elementwise ops whose output has the shape of their (first) data input.
_UNARY_SAME_SHAPE = frozenset({
    "Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Erf", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "Clip", "Not",
    "RandomUniformLike", "RandomNormalLike", "Bernoulli", "Dropout", "Softmax", "LogSoftmax",
    "Gelu", "HardSwish", "Mish",
})
_BINARY_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "Equal", "And", "Or", "Xor", "Max", "Min",
})
_MAX_CONST_ELEMENTS = 64


def small_const(value: ir.Value | None) -> np.ndarray | None:
    """The value of a small constant (initializer that is not a graph input, or Constant node).

    Large tensors are never read (their shape is checked first), so weights in
    external data stay on disk.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or producer.domain not in ("",
                                                                                      "ai.onnx"):
            return None
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            tensor = attr.as_tensor()
        else:
            for name in ("value_float", "value_int", "value_floats", "value_ints"):
                attr = producer.attributes.get(name)
                if attr is not None:
                    return np.asarray(attr.value)
            return None
    if tensor.size > _MAX_CONST_ELEMENTS:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - unreadable constant: simply not a known constant
        return None


def scalar_const(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, as a Python float."""
    array = small_const(value)
    if array is None or array.size != 1:
        return None
    try:
        return float(array.reshape(()))
    except (TypeError, ValueError):
        return None


def dims_equal(a: Dim, b: Dim) -> bool:
    return a == b and not (isinstance(a, int) != isinstance(b, int))


def describe(dim: Dim) -> str:
    if isinstance(dim, tuple):
        return "?"
    return str(dim)


class ShapeReasoner:
    """Symbolic dims of data tensors and symbolic values of 1-D shape tensors."""

    def __init__(self, hints: dict[str, Sequence[int | str | None]] | None = None) -> None:
        self.hints = hints or {}
        self._dims: dict[int, list[Dim] | None] = {}

    def assume(self, value: ir.Value, dims: list[Dim]) -> None:
        """Declare ``value``'s dims (a function input, from what every call site passes)."""
        self._dims[id(value)] = list(dims)

    # -- data tensors --------------------------------------------------------

    def data_dims(self, value: ir.Value | None, depth: int = 0) -> list[Dim] | None:
        """Symbolic dims of ``value`` (None when even the rank is unknown)."""
        if value is None or depth > 64:
            return None
        key = id(value)
        if key not in self._dims:
            self._dims[key] = self._compute_dims(value, depth)
        return self._dims[key]

    def _declared(self, value: ir.Value) -> list[int | str | None] | None:
        if value.shape is not None:
            dims: list[int | str | None] = []
            for dim in value.shape:
                if isinstance(dim, int):
                    dims.append(dim)
                else:
                    dims.append(dim.value if isinstance(dim.value, str) and dim.value else None)
            hinted = self.hints.get(value.name or "")
            if hinted is not None and len(hinted) == len(dims):
                dims = [d if d is not None else h for d, h in zip(dims, hinted, strict=True)]
            return dims
        hinted = self.hints.get(value.name or "")
        return list(hinted) if hinted is not None else None

    def _compute_dims(self, value: ir.Value, depth: int) -> list[Dim] | None:
        declared = self._declared(value)
        structural = self._structural_dims(value, depth)
        if declared is None:
            return structural
        if structural is not None and len(structural) != len(declared):
            structural = None
        dims: list[Dim] = []
        for axis, dim in enumerate(declared):
            if dim is not None:
                dims.append(dim)
            elif structural is not None:
                dims.append(structural[axis])
            else:
                dims.append(("dim", id(value), axis))
        return dims

    def _structural_dims(self, value: ir.Value, depth: int) -> list[Dim] | None:
        """Dims derived from the producer, for ops that keep or permute a shape."""
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
            return None
        op = node.op_type
        first = node.inputs[0]
        if op == "Transpose":
            inner = self.data_dims(first, depth + 1)
            perm_attr = node.attributes.get("perm")
            if inner is None:
                return None
            perm = list(perm_attr.as_ints()) if perm_attr is not None else \
                list(reversed(range(len(inner))))
            if sorted(perm) != list(range(len(inner))):
                return None
            return [inner[p] for p in perm]
        if op in _UNARY_SAME_SHAPE and value is node.outputs[0]:
            return self.data_dims(first, depth + 1)
        if op == "ConstantOfShape":
            return self.shape_values(first, depth + 1)
        if op in _BINARY_ELEMENTWISE and len(node.inputs) == 2:
            a = self.data_dims(node.inputs[0], depth + 1)
            b = self.data_dims(node.inputs[1], depth + 1)
            return _broadcast(a, b)
        return None

    # -- shape tensors -------------------------------------------------------

    def shape_values(self, value: ir.Value | None, depth: int = 0) -> list[Dim] | None:
        """Symbolic elements of a 0-D/1-D integer shape tensor, or None."""
        if value is None or depth > 64:
            return None
        const = small_const(value)
        if const is not None:
            if const.ndim > 1 or not np.issubdtype(const.dtype, np.number):
                return None
            return [int(v) for v in const.reshape(-1)]
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        op = node.op_type
        inputs = node.inputs
        if op == "Shape":
            dims = self.data_dims(inputs[0], depth + 1)
            if dims is None:
                return None
            start = _int_attr(node, "start", 0)
            end = _int_attr(node, "end", None)
            return list(dims[slice(start, end)])
        if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
            inner = self.shape_values(inputs[0], depth + 1)
            # Reshaping a shape vector keeps its elements (0-D <-> 1-D only).
            return inner
        if op == "Concat":
            parts: list[Dim] = []
            for part in inputs:
                values = self.shape_values(part, depth + 1)
                if values is None:
                    return None
                parts.extend(values)
            return parts
        if op == "Slice":
            return self._slice(node, depth)
        if op == "Gather":
            data = self.shape_values(inputs[0], depth + 1)
            index = small_const(inputs[1]) if len(inputs) > 1 else None
            if data is None or index is None or _int_attr(node, "axis", 0) != 0:
                return None
            try:
                return [data[int(i)] for i in index.reshape(-1)]
            except IndexError:
                return None
        return None

    def _slice(self, node: ir.Node, depth: int) -> list[Dim] | None:
        inputs = list(node.inputs) + [None] * 5
        data = self.shape_values(inputs[0], depth + 1)
        if data is None:
            return None
        if inputs[1] is None:  # Slice-1: attributes
            starts = _ints_attr(node, "starts")
            ends = _ints_attr(node, "ends")
            axes = _ints_attr(node, "axes") or [0]
            steps = [1]
        else:
            starts, ends = _const_list(inputs[1]), _const_list(inputs[2])
            axes = _const_list(inputs[3]) if inputs[3] is not None else [0]
            steps = _const_list(inputs[4]) if inputs[4] is not None else [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or axes not in ([0], [-1]):
            return None
        return list(data[slice(starts[0], ends[0], steps[0])])


def _broadcast(a: list[Dim] | None, b: list[Dim] | None) -> list[Dim] | None:
    """Broadcast result when one side is a scalar-like constant; otherwise only equal ranks."""
    if a is None or b is None:
        return None
    if all(d == 1 for d in b) and len(b) <= len(a):
        return a
    if all(d == 1 for d in a) and len(a) <= len(b):
        return b
    if len(a) != len(b):
        return None
    result: list[Dim] = []
    for x, y in zip(a, b, strict=True):
        if dims_equal(x, y) or y == 1:
            result.append(x)
        elif x == 1:
            result.append(y)
        else:
            return None
    return result


def _int_attr(node: ir.Node, name: str, default: int | None) -> int | None:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _const_list(value: ir.Value | None) -> list[int] | None:
    const = small_const(value)
    if const is None:
        return None
    return [int(v) for v in const.reshape(-1)]


def shared_axes_for(noise: Sequence[Dim], data: Sequence[Dim]) -> tuple[list[int] | None, str]:
    """Shared axes of a mask of shape ``noise`` broadcast over data of shape ``data``.

    A noise dim equal to the data dim is not shared, a noise dim of 1 is.
    Returns ``(axes, "")`` or ``(None, reason)``.
    """
    if len(noise) > len(data):
        return None, f"noise rank {len(noise)} exceeds data rank {len(data)}"
    padded = [1] * (len(data) - len(noise)) + list(noise)
    axes = []
    for axis, (n, d) in enumerate(zip(padded, data, strict=True)):
        if dims_equal(n, d):
            continue
        if n == 1 and isinstance(n, int):
            axes.append(axis)
            continue
        return None, (f"noise dim {axis} is {describe(n)}, neither 1 nor the data dim "
                      f"{describe(d)}")
    return axes, ""
