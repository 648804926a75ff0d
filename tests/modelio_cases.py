"""Models with an external tensor in every place a TensorProto can sit (file-layer tests).

``place(tensor, where)`` puts one tensor into a minimal model at ``where``;
the models only need to load, not to run. An audit hook records every file
the process opens, so "nothing is read" is checked, not assumed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, SparseTensorProto, TensorProto
from onnx import helper as oh

W = np.arange(12, dtype=np.float32)

OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_besides(*allowed: Path) -> list[str]:
    """Files opened since ``OPENED.clear()`` other than ``allowed`` and reopened descriptors."""
    names = {str(p) for p in allowed} | {p.name for p in allowed}
    return [p for p in OPENED if p not in names and not p.startswith("/proc/self/fd/")]


def external(name: str, location: str, offset: str | None = "0",
             length: str | None = str(W.nbytes), extra: list | None = None) -> TensorProto:
    """A float[12] tensor stored in ``location``; ``extra`` adds (key, value) entries."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[12])
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset), ("length", length), *(extra or [])]
    for key, value in entries:
        if value is not None:
            tensor.external_data.add(key=key, value=value)
    return tensor


def _graph(nodes: list | None = None, inits: list | None = None, sparse: list | None = None,
           name: str = "g") -> onnx.GraphProto:
    nodes = [*(nodes or []), oh.make_node("Identity", ["x"], ["y"])]
    return oh.make_graph(nodes, name, [oh.make_tensor_value_info("x", TensorProto.FLOAT, [12])],
                         [oh.make_tensor_value_info("y", TensorProto.FLOAT, [12])],
                         inits or [], sparse_initializer=sparse or [])


def _index() -> TensorProto:
    return oh.make_tensor("idx", TensorProto.INT64, [1], [0])


def _constant(tensor: TensorProto, out: str = "c") -> NodeProto:
    return oh.make_node("Constant", [], [out], value=tensor)


def _mismatched(tensor: TensorProto, field: str) -> NodeProto:
    """A Constant whose attribute says INT but also carries a tensor or a graph."""
    attr = AttributeProto(name="value", type=AttributeProto.INT, i=1)
    if field == "t":
        attr.t.CopyFrom(tensor)
    else:
        attr.g.CopyFrom(_graph(inits=[tensor], name="hidden"))
    node = NodeProto(op_type="Constant", output=["c"], name="mismatch")
    node.attribute.append(attr)
    return node


def _if(branch_nodes: list | None = None, branch_inits: list | None = None) -> NodeProto:
    then = _graph(branch_nodes, branch_inits, name="then")
    other = _graph(name="else")
    return oh.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other, name="if")


#: where → a substring the error's location label must contain
PLACES = {
    "graph": "initializer",
    "sparse_values": "sparse values",
    "sparse_indices": "sparse indices",
    "constant": "attribute 'value'",
    "constant_sparse": "attribute 'sparse_value'",
    "tensors_attribute": "attribute 'weights'",
    "mismatched_type_t": "node 'mismatch'",
    "mismatched_type_g": "graph 'hidden'",
    "if_body": "graph 'then'",
    "loop_body": "graph 'body'",
    "nested_if_in_loop": "graph 'then'",
    "function": "function 'local.f'",
    "function_subgraph": "function 'local.f'",
    "function_default": "function 'local.f' default",
    "training_initialization": "training_info[0].initialization",
    "training_algorithm": "training_info[0].algorithm",
}


def place(tensor: TensorProto, where: str) -> onnx.ModelProto:
    """A minimal model with ``tensor`` at ``where`` (a key of :data:`PLACES`)."""
    functions: list[onnx.FunctionProto] = []
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    sparse: list[SparseTensorProto] = []
    training = None
    if where == "graph":
        inits = [tensor]
    elif where == "sparse_values":
        sparse = [oh.make_sparse_tensor(tensor, _index(), [12])]
    elif where == "sparse_indices":
        values = oh.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        sparse = [oh.make_sparse_tensor(values, tensor, [12])]
    elif where == "constant":
        nodes = [_constant(tensor)]
    elif where == "constant_sparse":
        nodes = [oh.make_node("Constant", [], ["c"],
                              sparse_value=oh.make_sparse_tensor(tensor, _index(), [12]))]
    elif where == "tensors_attribute":
        nodes = [oh.make_node("Custom", [], ["c"], domain="test", weights=[tensor])]
    elif where.startswith("mismatched_type_"):
        nodes = [_mismatched(tensor, where[-1])]
    elif where == "if_body":
        nodes = [_if(branch_inits=[tensor])]
    elif where in ("loop_body", "nested_if_in_loop"):
        inner = [_constant(tensor)] if where == "loop_body" else [_if([_constant(tensor)])]
        body = _graph(inner, name="body")
        nodes = [oh.make_node("Loop", ["n", "cond"], ["z"], body=body, name="loop")]
    elif where.startswith("function"):
        if where == "function":
            body = [_constant(tensor)]
        elif where == "function_subgraph":
            body = [_if([_constant(tensor)])]
        else:
            body = []
        function = oh.make_function("local", "f", ["a"], ["b"],
                                    [*body, oh.make_node("Identity", ["a"], ["b"])],
                                    [oh.make_opsetid("", 18)])
        if where == "function_default":
            function.attribute_proto.append(oh.make_attribute("w", tensor))
        functions = [function]
        nodes = [oh.make_node("f", ["x"], ["fx"], domain="local")]
    elif where.startswith("training_"):
        training = onnx.TrainingInfoProto()
        if where == "training_initialization":
            training.initialization.CopyFrom(_graph(inits=[tensor], name="init"))
            training.algorithm.CopyFrom(_graph(name="algo"))
        else:
            training.algorithm.CopyFrom(_graph([_constant(tensor)], name="algo"))
    else:
        raise ValueError(where)
    opsets = [oh.make_opsetid("", 18), oh.make_opsetid("local", 1), oh.make_opsetid("test", 1)]
    model = oh.make_model(_graph(nodes, inits, sparse), opset_imports=opsets,
                          functions=functions)
    if training is not None:
        model.training_info.append(training)
    return model


def write_model(folder: Path, model: onnx.ModelProto, data: bytes | None = W.tobytes(),
                name: str = "model.onnx") -> Path:
    """``model`` as ``folder/name`` with ``data`` as ``folder/w.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (folder / "w.bin").write_bytes(data)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
