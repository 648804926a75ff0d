"""The ``training_mode`` switch: found, defined where nodes read it, threaded, defaulted,
turned on, removed — for every pass (rewrite, strip, mc, inline), in one place.

The switch is the main-graph input named ``training_mode`` whose type is a boolean
scalar or a boolean tensor of undeclared shape (:func:`is_switch_type`). An input of
that name and another type is the model's own value: every pass leaves it alone
(rewrite refuses to add its switch next to it, see :func:`check_training_switch_name`).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import FunctionProto, TensorProto

from ..errors import UserError, printable
from .constants import scalar_of
from .scopes import Scope, model_scopes, top_scopes

#: The boolean scalar that switches every dropout of a rewritten model.
TRAINING_MODE = "training_mode"


def _reads(scope: Scope, name: str) -> bool:
    return any(name in node.input for s in scope.descendants() for node in s.nodes)


def _produced_names(scope: Scope) -> set[str]:
    return {out for s in scope.descendants() for node in s.nodes for out in node.output}


def is_switch_type(info: onnx.ValueInfoProto) -> bool:
    """Whether a value of this declared type can be the switch: a boolean tensor of rank 0
    or of undeclared shape."""
    tensor = info.type.tensor_type
    return (info.type.HasField("tensor_type") and tensor.elem_type == TensorProto.BOOL
            and (not tensor.HasField("shape") or len(tensor.shape.dim) == 0))


def switch_input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    """The model's switch (see the module docstring), or None."""
    info = next((i for i in model.graph.input if i.name == TRAINING_MODE), None)
    return info if info is not None and is_switch_type(info) else None


def remove_inputs(graph: onnx.GraphProto, names: Collection[str]) -> None:
    """Remove these graph inputs and their initializer defaults."""
    if not names:
        return
    for entries in (graph.input, graph.initializer):
        kept = [i for i in entries if i.name not in names]
        if len(kept) != len(entries):
            del entries[:]
            entries.extend(kept)


def check_training_switch_name(model: onnx.ModelProto) -> None:
    """Refuse a model whose own ``training_mode`` value could not serve as the switch.

    Only the switch itself (:func:`is_switch_type`) may already carry the name (it is
    then reused); anything else named ``training_mode`` would be silently captured.
    """
    graph = model.graph
    for info in graph.input:
        if info.name == TRAINING_MODE and not is_switch_type(info):
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
    """Give the switch the initializer default ``value`` (a model without one is left alone)."""
    if switch_input(model) is None:
        return
    graph = model.graph
    for init in graph.initializer:
        if init.name == TRAINING_MODE:
            init.CopyFrom(_default_tensor(value))
            return
    graph.initializer.append(_default_tensor(value))


def take_switch_default(model: onnx.ModelProto) -> bool | None:
    """Remove the switch's initializer default (it must then be fed); return what it was."""
    if switch_input(model) is None:
        return None
    graph = model.graph
    default = next((i for i in graph.initializer if i.name == TRAINING_MODE), None)
    if default is None:
        return None
    graph.initializer.remove(default)
    return bool(scalar_of(default))


def turn_switch_on(model: onnx.ModelProto) -> bool:
    """Replace the switch by a ``Constant`` true of its name; False if there is none.

    Its readers in subgraphs see the constant, functions get it through their call
    arguments, as they got the input.
    """
    if switch_input(model) is None:
        return False
    remove_inputs(model.graph, {TRAINING_MODE})
    model.graph.node.insert(0, onnx.helper.make_node(
        "Constant", [], [TRAINING_MODE], name=TRAINING_MODE,
        value=onnx.helper.make_tensor(TRAINING_MODE, TensorProto.BOOL, [], [True])))
    return True


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
    an outer function may free its own in turn); then the switch and its default.
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
    main = model_scopes(model)[0]
    if switch_input(model) is None or _reads(main, TRAINING_MODE) or \
            TRAINING_MODE in main.output_names:
        return
    remove_inputs(model.graph, {TRAINING_MODE})
