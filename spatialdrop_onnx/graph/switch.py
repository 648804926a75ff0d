"""The ``training_mode`` switch: defined where nodes read it, threaded, defaulted, removed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import FunctionProto, TensorProto

from ..errors import UserError, printable
from .scopes import Scope, model_scopes, top_scopes

#: The boolean scalar that switches every dropout of a rewritten model.
TRAINING_MODE = "training_mode"


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
