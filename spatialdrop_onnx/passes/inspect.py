"""Inspect: list every dropout site of a model, where it sits and what it would become.

One entry per site, in this order: ``SpatialDropout`` and ONNX ``Dropout``
nodes already in the model (main graph, subgraphs, model-local functions),
then random-mask subgraphs the rewrite rules recognise, then random ops no
rule converts (with the reason). Each entry has ``name``, ``kind``
(``spatial`` | ``elementwise`` | ``random-subgraph`` | ``unconvertible``),
``ratio`` (number or None), ``shared_axes`` (list or None), ``graph`` (``main``,
``main/<node>/<attribute>`` for subgraphs, ``function <domain>.<name>``),
``op_type`` and, depending on the kind, ``training_mode``, ``rule``,
``becomes`` or ``reason``.
"""

from __future__ import annotations

import os

import onnx
from onnx import AttributeProto

from .. import spec
from . import _proto

SPATIAL = "spatial"
ELEMENTWISE = "elementwise"
RANDOM_SUBGRAPH = "random-subgraph"
UNCONVERTIBLE = "unconvertible"
KINDS = (SPATIAL, ELEMENTWISE, RANDOM_SUBGRAPH, UNCONVERTIBLE)


def inspect(model: onnx.ModelProto) -> list[dict]:
    """Every dropout site of ``model`` (see the module docstring for the fields)."""
    sites = _dropout_nodes(model)
    if any(_proto.is_random(n) for top in _proto.model_scopes(model)
           for s in _proto.flatten(top) for n in s.nodes):
        from .rewrite import rewrite_sites

        _, found, unconvertible = rewrite_sites(model, training_default=True)
        sites.extend(found)
        sites.extend(unconvertible)
    return sites


def inspect_path(path: str | os.PathLike) -> list[dict]:
    """Load ``path`` safely (external data validated, never read) and inspect it."""
    from ..modelio import load_model

    return inspect(load_model(path).model)


def _dropout_nodes(model: onnx.ModelProto) -> list[dict]:
    constants = _proto.constant_values(model)
    types: dict[str, onnx.TypeProto] | None = None
    sites = []
    for top in _proto.model_scopes(model):
        for scope in _proto.flatten(top):
            local = dict(constants)
            if scope.function is not None:
                local.update(_local_constants(scope))
            for node in scope.nodes:
                if _proto.is_spatial_dropout(node):
                    if types is None:
                        types = _proto.value_types(model)
                    sites.append(_spatial_entry(node, scope, local, types))
                elif _proto.is_onnx_dropout(node):
                    sites.append(_onnx_entry(node, scope, local))
    return sites


def _local_constants(scope: _proto.Scope) -> dict:
    found = {}
    for node in scope.nodes:
        if node.op_type == "Constant" and node.output:
            attr = _proto.get_attr(node, "value")
            if attr is not None and attr.type == AttributeProto.TENSOR:
                found[node.output[0]] = attr.t
    return found


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _flag(node: onnx.NodeProto, constants: dict) -> str:
    name = _input(node, 2)
    if not name:
        return "absent (false)"
    value = _proto.scalar_of(constants.get(name))
    if value is None:
        return name
    return "true" if value else "false"


def _ratio(node: onnx.NodeProto, constants: dict) -> float | None:
    name = _input(node, 1)
    if not name:
        return spec.DEFAULT_RATIO
    value = _proto.scalar_of(constants.get(name))
    return None if value is None else float(value)


def _spatial_entry(node: onnx.NodeProto, scope: _proto.Scope, constants: dict,
                   types: dict) -> dict:
    attr = _proto.get_attr(node, spec.ATTR_SHARED_AXES)
    axes = list(attr.ints) if attr is not None else None
    rank = _proto.rank_of(types, _input(node, 0)) if scope.function is None else None
    shared: list[int] | None
    if rank is not None:
        try:
            shared = list(spec.resolve_shared_axes(rank, axes))
        except spec.SpatialDropoutError:
            shared = axes
    else:
        shared = axes
    seed = _proto.get_attr(node, spec.ATTR_SEED)
    return {
        "name": node.name or node.output[0],
        # SpatialDropout with no shared axis is element-wise dropout.
        "kind": ELEMENTWISE if shared == [] else SPATIAL,
        "op_type": node.op_type,
        "ratio": _ratio(node, constants),
        "shared_axes": shared,
        "graph": scope.path,
        "training_mode": _flag(node, constants),
        "seed": seed.i if seed is not None else None,
    }


def _onnx_entry(node: onnx.NodeProto, scope: _proto.Scope, constants: dict) -> dict:
    if scope.opset < 12:
        attr = _proto.get_attr(node, "ratio")
        ratio: float | None = attr.f if attr is not None else spec.DEFAULT_RATIO
        flag = "absent (inference)"
    else:
        ratio = _ratio(node, constants)
        flag = _flag(node, constants)
    return {
        "name": node.name or node.output[0],
        "kind": ELEMENTWISE,
        "op_type": node.op_type,
        "ratio": ratio,
        "shared_axes": [],
        "graph": scope.path,
        "training_mode": flag,
    }
