"""Inspect: list every dropout site of a model, where it sits and what it would become.

One :class:`~spatialdrop_onnx.sites.Site` per site, in this order:
``SpatialDropout`` and ONNX ``Dropout`` nodes already in the model (main graph,
subgraphs, model-local functions), then random-mask subgraphs the rewrite rules
recognise (``becomes`` says what rewrite writes), then random ops no rule
converts (with the ``reason``).
"""

from __future__ import annotations

import os

import onnx

from .. import spec
from ..errors import prefixed_with
from ..graph import (
    Constants,
    Scope,
    TypeFacts,
    check_opset_imports,
    declared_types,
    get_attr,
    input_at,
    is_onnx_dropout,
    is_random,
    is_spatial_dropout,
    model_scopes,
)
from ..sites import Kind, Site
from .result import ModelArg, load_argument


def inspect(model: ModelArg) -> list[Site]:
    """Every dropout site of ``model`` (a ModelProto or a path)."""
    given = load_argument(model, "inspect")
    proto, folder = given.model, given.folder
    check_opset_imports(proto)
    sites = _dropout_nodes(proto)
    if any(is_random(n) for s in model_scopes(proto) for n in s.nodes):
        from .rewrite_pass import apply_rules

        outcome = apply_rules(proto, folder=folder, dry_run=True)
        sites.extend(outcome.converted)
        sites.extend(outcome.unconvertible)
    return sites


def inspect_file(path: str | os.PathLike) -> list[Site]:
    """Load ``path`` safely (external data validated, never read; large tensors skipped)
    and inspect it."""
    with prefixed_with(path):
        return inspect(path)


def _dropout_nodes(model: onnx.ModelProto) -> list[Site]:
    constants = Constants(model)
    types: TypeFacts | None = None
    sites = []
    for scope in model_scopes(model):
        for node in scope.nodes:
            if is_spatial_dropout(node):
                if types is None:
                    types = declared_types(model)
                sites.append(_spatial_site(node, scope, constants, types))
            elif is_onnx_dropout(node):
                sites.append(_onnx_site(node, scope, constants))
    return sites


def _flag(node: onnx.NodeProto, scope: Scope, constants: Constants) -> str:
    name = input_at(node, 2)
    if not name:
        return "absent (false)"
    value = constants.scalar(scope, name)
    if value is None:
        return name
    return "true" if value else "false"


def _ratio(node: onnx.NodeProto, scope: Scope, constants: Constants) -> float | None:
    name = input_at(node, 1)
    if not name:
        return spec.DEFAULT_RATIO
    value = constants.scalar(scope, name)
    return None if value is None else float(value)


def _spatial_site(node: onnx.NodeProto, scope: Scope, constants: Constants,
                  types: TypeFacts) -> Site:
    attr = get_attr(node, spec.ATTR_SHARED_AXES)
    axes = list(attr.ints) if attr is not None else None
    rank = types.rank_of(scope, input_at(node, 0))
    shared: list[int] | None = axes
    if rank is not None:
        try:
            shared = list(spec.resolve_shared_axes(rank, axes))
        except spec.SpatialDropoutError:
            shared = axes
    seed = get_attr(node, spec.ATTR_SEED)
    return Site(
        name=node.name or node.output[0],
        # SpatialDropout with no shared axis is element-wise dropout.
        kind=Kind.ELEMENTWISE if shared == [] else Kind.SPATIAL,
        graph=scope.path, op_type=node.op_type, ratio=_ratio(node, scope, constants),
        shared_axes=None if shared is None else tuple(shared),
        training_mode=_flag(node, scope, constants),
        seed=seed.i if seed is not None else None)


def _onnx_site(node: onnx.NodeProto, scope: Scope, constants: Constants) -> Site:
    if scope.opset < 12:
        attr = get_attr(node, "ratio")
        ratio: float | None = attr.f if attr is not None else spec.DEFAULT_RATIO
        flag = "absent (inference)"
    else:
        ratio = _ratio(node, scope, constants)
        flag = _flag(node, scope, constants)
    return Site(name=node.name or node.output[0], kind=Kind.ELEMENTWISE, graph=scope.path,
                op_type=node.op_type, ratio=ratio, shared_axes=(), training_mode=flag)
