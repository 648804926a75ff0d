"""Bringing a model up to the opset the function bodies need, with onnx's version converter.

``onnx.version_converter`` runs in a forked child (it can abort on malformed
models). It converts the main graph only and drops model-local functions, so each
function body is converted on its own and put back; it turns a Dropout-7..9 mask
(the data's type) into a bool without touching its readers, so a used mask is cast
back; and it rebuilds every tensor, so a skeleton's placeholders are set aside and
put back (or filled in the child).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from ..errors import UserError, printable
from ..function_body import MIN_OPSET
from ..graph import NameMaker, Scope, all_names, default_opset, is_onnx_dropout, model_scopes
from ..isolation import run_isolated

if TYPE_CHECKING:
    from ..modelio import SkeletonSource


def convert_opset(model: onnx.ModelProto, opset: int,
                   source: SkeletonSource | None = None) -> onnx.ModelProto:
    """``model`` at default-domain opset ``MIN_OPSET``, its model-local functions included.

    ``onnx.version_converter`` converts the main graph only and drops the
    model's functions, so each function body is converted on its own (as the
    graph of a throw-away model) and put back. The converter rebuilds every
    tensor and would drop a skeleton's placeholders: main-graph initializers
    holding one are set aside (typed inputs meanwhile) and put back after; other
    placeholders get their data in the child doing the work.
    """
    aside, model = _set_aside_placeholders(model)

    def convert(skeleton: onnx.ModelProto) -> bytes:
        import onnx.version_converter

        if source is not None:
            from ..modelio import fill_placeholders

            fill_placeholders(skeleton, source)  # in the child: only what is left
        converted = onnx.version_converter.convert_version(skeleton, MIN_OPSET)
        del converted.functions[:]
        for function in skeleton.functions:
            converted.functions.append(_convert_function(function, skeleton, MIN_OPSET))
        fresh = NameMaker(all_names(converted))
        if opset < 10:
            main = [s for s in model_scopes(converted) if s.function is None]
            _keep_mask_types(main, fresh)
        for function, original in zip(converted.functions, skeleton.functions, strict=True):
            if 0 < default_opset(original.opset_import) < 10:
                _keep_mask_types([s for s in model_scopes(converted, include_ours=True)
                                  if s.function is function], fresh)
        return converted.SerializeToString()

    try:
        data = run_isolated(convert, model, what="converting the opset")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the model imports default-domain opset {opset}; rewriting needs >= {MIN_OPSET} "
            f"and onnx.version_converter could not convert it: {printable(first)}") from None
    converted = onnx.ModelProto.FromString(data)
    if aside is not None:
        _put_back(converted, aside)
    return converted


@dataclass
class _SetAside:
    """Main-graph initializers kept out of the version converter."""

    order: list[tuple[str, bool]]     # every initializer name, in order; True: set aside
    tensors: list[onnx.TensorProto]   # the placeholders set aside, in order
    added_inputs: set[str]            # typed inputs standing in for them


def _set_aside_placeholders(model: onnx.ModelProto
                            ) -> tuple[_SetAside | None, onnx.ModelProto]:
    from ..modelio import is_placeholder

    if not any(is_placeholder(init) for init in model.graph.initializer):
        return None, model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inputs = {info.name for info in graph.input}
    aside = _SetAside([], [], set())
    kept = []
    for init in graph.initializer:
        placeholder = is_placeholder(init)
        aside.order.append((init.name, placeholder))
        if not placeholder:
            kept.append(init)
            continue
        aside.tensors.append(init)
        if init.name not in inputs and init.name not in aside.added_inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
            aside.added_inputs.add(init.name)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return aside, copy


def _put_back(model: onnx.ModelProto, aside: _SetAside) -> None:
    """The set-aside initializers back in their places; the stand-in inputs removed."""
    graph = model.graph
    if aside.added_inputs:
        inputs = [info for info in graph.input if info.name not in aside.added_inputs]
        del graph.input[:]
        graph.input.extend(inputs)
    converted: dict[str, list[onnx.TensorProto]] = {}
    for init in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        converted.setdefault(init.name, []).append(copy)
    placeholders = iter(aside.tensors)
    ordered = []
    for name, set_aside in aside.order:
        if set_aside:
            ordered.append(next(placeholders))
        elif converted.get(name):
            ordered.append(converted[name].pop(0))
    for rest in converted.values():  # initializers the converter added
        ordered.extend(rest)
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def _keep_mask_types(scopes: list[Scope], fresh: NameMaker) -> None:
    """Give converted Dropout masks their old type back (in one graph tree or function).

    Below opset 10 a Dropout's ``mask`` has the data's type; the version converter
    makes it a bool without touching its readers, which then no longer type-check
    (``Mul(y, mask)``). A used mask is renamed and cast back with ``CastLike``.
    """
    used = {name for scope in scopes for node in scope.nodes for name in node.input}
    used.update(name for scope in scopes for name in scope.output_names)
    for scope in reversed(scopes):  # children first: rewriting a node list copies its nodes
        nodes: list[onnx.NodeProto] = []
        for node in scope.nodes:
            nodes.append(node)
            if not is_onnx_dropout(node) or len(node.output) < 2 or node.output[1] not in used:
                continue
            mask = node.output[1]
            node.output[1] = fresh(f"{mask}/bool")
            nodes.append(onnx.helper.make_node("CastLike", [node.output[1], node.output[0]],
                                               [mask], name=fresh(f"{mask}/as_data_type")))
        if len(nodes) != len(scope.nodes):
            del scope.nodes[:]
            scope.nodes.extend(nodes)


def _convert_function(function: onnx.FunctionProto, model: onnx.ModelProto,
                      target: int) -> onnx.FunctionProto:
    """``function`` with its body converted to default-domain opset ``target``."""
    import onnx.version_converter

    result = onnx.FunctionProto()
    result.CopyFrom(function)
    if default_opset(function.opset_import) in (0, target):
        return result
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph(
        list(function.node), function.name or "function",
        [onnx.helper.make_value_info(name, untyped) for name in function.input],
        [onnx.helper.make_value_info(name, untyped) for name in function.output])
    body = onnx.helper.make_model(graph, opset_imports=list(function.opset_import))
    body.ir_version = model.ir_version
    body.functions.extend(f for f in model.functions if f is not function)
    converted = onnx.version_converter.convert_version(body, target)
    del result.node[:]
    result.node.extend(converted.graph.node)
    del result.opset_import[:]
    result.opset_import.extend(converted.opset_import)
    return result


