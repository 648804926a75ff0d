"""Which noise dims are shared: reasoning on the noise-shape expression itself.

Exporters build a dropout's noise shape from constants and ``Shape`` of some
tensor (``Concat(Shape(x)[0:1], [1], [C])`` from Keras, ``Concat(Shape(input)
[0:1], [8], [1], [1])`` or a constant from PyTorch). The shared axes follow from
that expression, element by element, without knowing the data's shape:

* an element that is the constant 1 is shared;
* any other element is not shared: it must equal the data dim (a constant that
  provably differs refuses the site);
* an element that is a dimension of some tensor counts as equal to the data dim
  when it provably is (the same dimension of the same tensor, seen through
  shape-preserving ops, or the same symbolic name), or when it sits on axis 0,
  where exporters read the batch size from any batch-carrying tensor;
  otherwise the site is refused rather than guessed;
* the number of elements is the rank (fewer than the data's rank: the leading
  axes broadcast, so they are shared).

So a site is analysable even when everything downstream of an unconverted
TensorFlow op is shapeless. Dims are an ``int``, a ``str`` (a symbolic name) or
a :class:`DimOf` token ("axis k of tensor t" for a dim nobody knows). Known
dims come from per-scope type facts (:func:`spatialdrop_onnx.graph.infer_types`),
keyed by IR value, never by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .. import spec
from ..graph import DEFAULT_DOMAINS, MAX_CONSTANT_ELEMENTS, holds_values


@dataclass(frozen=True)
class DimOf:
    """Axis ``axis`` of the tensor with id ``root`` (seen through shape-preserving ops)."""

    root: int
    axis: int
    label: str = ""

    def __str__(self) -> str:
        return f"dim {self.axis} of {self.label or '?'}"


Dim = int | str | DimOf
Dims = tuple[int | str | None, ...]


@dataclass(frozen=True)
class WholeShape:
    """``Shape(t)`` of a tensor whose rank is unknown."""

    value: ir.Value


#: Ops whose (first) output has the shape of their first input.
SAME_SHAPE_OPS = frozenset({
    "Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Erf", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "Clip", "Not",
    "RandomUniformLike", "RandomNormalLike", "Bernoulli", "Dropout", "Softmax", "LogSoftmax",
    "Gelu", "HardSwish", "Mish", "Floor", "Ceil", "Round", "Reciprocal", "IsNaN",
})
BINARY_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "Equal", "And", "Or", "Xor", "Max", "Min",
})


def small_const(value: ir.Value | None,
                read_external: Callable[[ir.Tensor], np.ndarray | None] | None = None
                ) -> np.ndarray | None:
    """The value of a small constant (initializer that is not a graph input, or Constant node).

    Large tensors are never read (their size is checked first). A tensor in
    external data is read only through ``read_external`` (a bounded, validated
    read); without it such a constant is unknown.
    """
    if value is None or value.is_graph_input():
        return None
    try:  # an initializer or a Constant node
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant (two attributes, sparse_value): unknown
        return None
    if tensor is None:
        return None
    return small_tensor_values(tensor, read_external)


def small_tensor_values(tensor: ir.TensorProtocol,
                        read_external: Callable[[ir.Tensor], np.ndarray | None] | None = None
                        ) -> np.ndarray | None:
    """The values of a tensor of at most ``MAX_CONSTANT_ELEMENTS`` elements, or None.

    A larger tensor, a skeleton placeholder (its data left in the model file)
    and an unreadable tensor are never read; external data only through
    ``read_external``.
    """
    if tensor.size > MAX_CONSTANT_ELEMENTS:
        return None
    if isinstance(tensor, ir.ExternalTensor):
        return None if read_external is None else read_external(tensor)
    if isinstance(tensor, ir.TensorProtoTensor) and not holds_values(tensor.raw):
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - an unreadable constant is simply not a known constant
        return None


class ShapeReasoner:
    """Dims of tensors and elements of shape tensors, from facts and from the graph."""

    def __init__(self, facts: Callable[[ir.Value], Dims | None] | None = None,
                 read_external: Callable[[ir.Tensor], np.ndarray | None] | None = None
                 ) -> None:
        #: Dims inference knows for a value (None entries: unknown dim; None: unknown rank);
        #: asked only when the value declares no shape and the graph does not tell.
        self.facts = facts or (lambda value: None)
        self.read_external = read_external
        self._roots: dict[int, ir.Value] = {}

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        return small_const(value, self.read_external)

    def scalar(self, value: ir.Value | None) -> float | None:
        array = self.const(value)
        if array is None or array.size != 1:
            return None
        try:
            return float(array.reshape(()))
        except (TypeError, ValueError):
            return None

    # -- tensors ------------------------------------------------------------------

    @staticmethod
    def _declared(value: ir.Value) -> Dims | None:
        if value.shape is None:
            return None
        return tuple(d if isinstance(d, int) else
                     (d.value if isinstance(d.value, str) and d.value else None)
                     for d in value.shape)

    def root(self, value: ir.Value) -> ir.Value:
        """The tensor ``value`` has the shape of, through shape-preserving ops (memoised)."""
        found = self._roots.get(id(value))
        if found is None:
            found = self._roots[id(value)] = self._root(value)
        return found

    def _root(self, value: ir.Value) -> ir.Value:
        path: list[ir.Value] = []
        on_path: set[int] = set()
        while True:
            known = self._roots.get(id(value))
            if known is not None:
                value = known
                break
            following = self._same_shape_input(value)
            if following is None or id(following) in on_path:  # a cycle: refused on load
                break
            on_path.add(id(value))
            path.append(value)
            value = following
        for visited in path:  # every value on the way shares the root
            self._roots[id(visited)] = value
        return value

    def _same_shape_input(self, value: ir.Value) -> ir.Value | None:
        """The input ``value`` has the shape of, when its producer keeps the shape."""
        node = value.producer()
        if node is None or not node.inputs or value is not node.outputs[0]:
            return None
        if node.domain == spec.DOMAIN and node.op_type == spec.OP_TYPE:
            return node.inputs[0]  # a site converted earlier: its output has its data's shape
        if node.domain not in DEFAULT_DOMAINS:
            return None
        if node.op_type in SAME_SHAPE_OPS:
            return node.inputs[0]
        if node.op_type in BINARY_OPS and len(node.inputs) == 2:
            a, b = node.inputs
            if a is not None and b is not None and self._is_scalar_like(b):
                return a
            if a is not None and b is not None and self._is_scalar_like(a):
                return b
        return None

    def _is_scalar_like(self, value: ir.Value) -> bool:
        const = self.const(value)
        if const is not None:
            return const.size == 1
        declared = self._declared(value)
        return declared is not None and all(d == 1 for d in declared)

    def rank(self, value: ir.Value | None, depth: int = 0) -> int | None:
        if value is None or depth > 64:
            return None
        declared = self._declared(value)
        if declared is not None:
            return len(declared)
        node = value.producer()
        if node is not None and node.domain in DEFAULT_DOMAINS and node.inputs:
            if node.op_type == "Transpose":
                perm = node.attributes.get("perm")
                if perm is not None:
                    return len(perm.as_ints())
                return self.rank(node.inputs[0], depth + 1)
            if node.op_type == "ConstantOfShape":
                elements = self.shape_elements(node.inputs[0], depth + 1)
                return len(elements) if isinstance(elements, list) else None
            root = self.root(value)
            if root is not value:
                return self.rank(root, depth + 1)
        known = self.facts(value)
        return None if known is None else len(known)

    def dim(self, value: ir.Value, axis: int, depth: int = 0) -> Dim:
        """Axis ``axis`` (non-negative) of ``value``: known int/str, or a :class:`DimOf`."""
        declared = self._declared(value)
        if declared is not None and axis < len(declared) and declared[axis] is not None:
            return declared[axis]  # type: ignore[return-value]
        node = value.producer()
        if depth < 64 and node is not None and node.domain in DEFAULT_DOMAINS and \
                node.inputs and value is node.outputs[0]:
            if node.op_type == "Transpose" and node.inputs[0] is not None:
                perm_attr = node.attributes.get("perm")
                if perm_attr is not None:
                    perm = list(perm_attr.as_ints())
                    if axis < len(perm):
                        return self.dim(node.inputs[0], perm[axis], depth + 1)
            elif node.op_type == "ConstantOfShape":
                elements = self.shape_elements(node.inputs[0], depth + 1)
                if isinstance(elements, list) and axis < len(elements):
                    return elements[axis]
            else:
                root = self.root(value)
                if root is not value:
                    return self.dim(root, axis, depth + 1)
        known = self.facts(value)
        if known is not None and axis < len(known) and known[axis] is not None:
            return known[axis]  # type: ignore[return-value]
        return DimOf(id(value), axis, value.name or "")

    # -- shape tensors -------------------------------------------------------------

    def shape_elements(self, value: ir.Value | None, depth: int = 0
                       ) -> list[Dim] | WholeShape | None:
        """The elements of a 0-D/1-D integer shape tensor; None when unknown."""
        if value is None or depth > 64:
            return None
        const = self.const(value)
        if const is not None:
            if const.ndim > 1 or not np.issubdtype(const.dtype, np.integer):
                return None
            return [int(v) for v in const.reshape(-1)]
        node = value.producer()
        if node is None or node.domain not in DEFAULT_DOMAINS:
            return None
        op, inputs = node.op_type, node.inputs
        if op == "Shape" and inputs and inputs[0] is not None:
            return self._shape_of(node, inputs[0])
        if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten") and inputs:
            return self.shape_elements(inputs[0], depth + 1)  # 0-D <-> 1-D keeps the elements
        if op == "Concat":
            parts: list[Dim] = []
            for part in inputs:
                elements = self.shape_elements(part, depth + 1)
                if not isinstance(elements, list):
                    return None
                parts.extend(elements)
            return parts
        if op == "Slice":
            return self._slice(node, depth)
        if op == "Gather" and len(inputs) > 1:
            data = self.shape_elements(inputs[0], depth + 1)
            index = self.const(inputs[1])
            axis = node.attributes.get("axis")
            if index is None or (axis is not None and axis.as_int() != 0):
                return None
            if isinstance(data, WholeShape) and bool(np.all(index >= 0)):
                # Shape(t) of a tensor of unknown rank, permuted (tf2onnx's layout
                # changes): the indices name t's dims themselves.
                return [self.dim(data.value, int(i)) for i in index.reshape(-1)]
            if not isinstance(data, list):
                return None
            try:
                return [data[int(i)] for i in index.reshape(-1)]
            except IndexError:
                return None
        return None

    def _shape_of(self, node: ir.Node, tensor: ir.Value) -> list[Dim] | WholeShape | None:
        start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
        start = start_attr.as_int() if start_attr is not None else 0
        end = end_attr.as_int() if end_attr is not None else None
        rank = self.rank(tensor)
        if rank is None:
            if start == 0 and end is None:
                return WholeShape(tensor)
            if start < 0 or end is None or end < 0:
                return None  # needs the rank
            return [self.dim(tensor, k) for k in range(start, end)]
        return [self.dim(tensor, k) for k in range(rank)[slice(start, end)]]

    def _slice(self, node: ir.Node, depth: int) -> list[Dim] | None:
        inputs = list(node.inputs) + [None] * 5
        data = self.shape_elements(inputs[0], depth + 1)
        whole = data if isinstance(data, WholeShape) else None
        if whole is not None:
            rank = self.rank(whole.value)
            data = None if rank is None else [self.dim(whole.value, k) for k in range(rank)]
        if data is None and whole is None:
            return None
        if inputs[1] is None:  # Slice-1: attributes
            starts = _ints_attr(node, "starts")
            ends = _ints_attr(node, "ends")
            axes = _ints_attr(node, "axes") or [0]
            steps = [1]
        else:
            starts, ends = self._const_list(inputs[1]), self._const_list(inputs[2])
            axes = self._const_list(inputs[3]) if inputs[3] is not None else [0]
            steps = self._const_list(inputs[4]) if inputs[4] is not None else [1]
        if None in (starts, ends, axes, steps) or len(starts) != 1 or axes not in ([0], [-1]) \
                or steps[0] == 0:
            return None
        if data is None:
            # Shape(t) of a tensor of unknown rank: a forward slice within its leading
            # dims (``shape(x)[0:1]``, the batch size) names t's dims without the rank.
            start, end, step = starts[0], ends[0], steps[0]
            if not 0 <= start <= end <= start + 8 or step <= 0 or whole is None:
                return None
            return [self.dim(whole.value, k) for k in range(start, end, step)]
        return list(data[slice(starts[0], ends[0], steps[0])])

    def _const_list(self, value: ir.Value | None) -> list[int] | None:
        const = self.const(value)
        if const is None or not np.issubdtype(const.dtype, np.integer):
            return None
        return [int(v) for v in const.reshape(-1)]


def _ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def describe(dim: Dim) -> str:
    return str(dim)


def shared_axes_for(reasoner: ShapeReasoner, noise: list[Dim] | WholeShape,
                    data: ir.Value) -> tuple[list[int] | None, str]:
    """Shared axes of a mask with these noise elements broadcast over ``data``.

    Returns ``(axes, "")`` or ``(None, reason)``; see the module docstring.
    """
    if isinstance(noise, WholeShape):
        if reasoner.root(noise.value) is reasoner.root(data):
            return [], ""  # the noise shape is the data's own shape: element-wise
        rank = reasoner.rank(noise.value)
        if rank is None:
            return None, ("the noise shape is the shape of another tensor whose rank is "
                          "unknown")
        noise = [reasoner.dim(noise.value, k) for k in range(rank)]
    rank = reasoner.rank(data)
    if rank is None:
        rank = len(noise)  # the noise length is the rank
    if len(noise) > rank:
        return None, f"noise rank {len(noise)} exceeds data rank {rank}"
    offset = rank - len(noise)
    axes = list(range(offset))
    for position, element in enumerate(noise):
        axis = offset + position
        data_dim = reasoner.dim(data, axis)
        if isinstance(element, int):
            if element == 1:
                if data_dim != 1:
                    axes.append(axis)
                continue
            if isinstance(data_dim, int) and data_dim != element:
                return None, (f"noise dim {axis} is {element}, neither 1 nor the data dim "
                              f"{data_dim}")
            continue
        if element == data_dim or axis == 0:
            continue
        return None, (f"noise dim {axis} ({describe(element)}) cannot be shown to equal the "
                      f"data dim ({describe(data_dim)}) nor to be 1")
    return axes, ""
