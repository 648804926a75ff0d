"""A hypothesis strategy for valid dropout models at default-domain opsets 7..18.

Each drawn :class:`Case` holds two models built side by side: ``model`` with
dropout sites, and ``clean`` with every site replaced by what it computes with
training off (the identity; a used mask by ones). Sites are drawn from:

* ONNX ``Dropout`` in the form of its scope's opset: ratio as attribute (< 12)
  or input (constant, absent, or a graph input), ``training_mode`` absent,
  constant false/true, a graph input, or the user's own ``training_mode``;
* ``SpatialDropout`` with or without ``shared_axes``, ratio and flag;
* random masks: the generic ``RandomUniform -> Less -> Cast -> Mul`` form (any
  opset) and PyTorch dynamo's ``RandomUniformLike(ConstantOfShape)`` form (>= 9);

placed in the main graph, an ``If`` branch, a ``Loop`` body or a model-local
function. Masks are unused, consumed (``Mul`` by the cast mask) or graph outputs;
a site's output may also be a graph output; the batch dim may be symbolic; the
model may have its own input named ``training_mode`` (bool scalar, bool[2] or
float scalar), which rewrite must refuse unless it is a boolean scalar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx import spec

SHAPE = (2, 3, 4, 5)
FLOAT = TensorProto.FLOAT
BOOL = TensorProto.BOOL
FLAG_INPUT = "train_flag"
RATIO_INPUT = "ratio_in"
TRAINING_MODE = "training_mode"


@dataclass
class Case:
    """A drawn model, its training-off twin, the feeds, and what may be refused."""

    model: onnx.ModelProto
    clean: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    opset: int
    #: The user's own training_mode is not a boolean scalar: rewrite must refuse.
    bad_switch_name: bool
    #: A Loop (onnx infers no shape for its outputs) in a model below opset 13.
    loop_below_13: bool


@dataclass
class _Nodes:
    """One node container, twice: with the sites and with their training-off twins."""

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    clean: list[onnx.NodeProto] = field(default_factory=list)

    def both(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)
        self.clean.append(node)


class _Builder:
    def __init__(self, opset: int, user_switch: str) -> None:
        self.opset = opset
        self.user_switch = user_switch
        self.count = 0
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.clean_functions: list[onnx.FunctionProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.uses_ours = False
        self.loop_below_13 = False

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, where: _Nodes, value: object, dtype: int, dims: list[int] | None = None,
              as_node: bool = False) -> str:
        """A constant: a Constant node, or a main-graph initializer (Constant makes
        only float tensors below opset 9; subgraphs see the main graph's names)."""
        name = self.name("c")
        values = value if isinstance(value, list) else [value]
        tensor = oh.make_tensor(name, dtype, [] if dims is None else dims, values)
        if as_node and (dtype in (FLOAT,) or where.opset >= 9):
            where.both(oh.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name


def _static(dims: list) -> list[int]:
    return [SHAPE[0] if isinstance(d, str) else d for d in dims]


@st.composite
def _site(draw: st.DrawFn, b: _Builder, where: _Nodes, data: str, shape: list,
          main: bool, in_function: bool) -> str:
    """Add a dropout site reading ``data``; returns the name the next op reads."""
    opset = where.opset
    kind = draw(st.sampled_from(("dropout", "spatial", "random")))
    # Functions have no initializers: their constants are nodes (bool ones from opset 9).
    as_node = in_function or (main and draw(st.booleans()))
    bool_ok = not in_function or opset >= 9
    out, mask = b.name("y"), None
    ratio = draw(st.sampled_from((0.25, 0.5)))
    noise = list(shape)
    if kind in ("dropout", "spatial") and draw(st.booleans()):
        mask = b.name("mask")
    if kind == "dropout" and opset < 12:
        attrs = {"ratio": ratio} if draw(st.booleans()) else {}
        where.nodes.append(oh.make_node("Dropout", [data], [out] + ([mask] if mask else []),
                                        name=b.name("drop"), **attrs))
    elif kind in ("dropout", "spatial"):
        inputs = [data]
        ratio_from = draw(st.sampled_from(("absent", "constant", "input")[: 3 if main else 2]))
        if ratio_from == "constant":
            inputs.append(b.const(where, ratio, FLOAT, as_node=as_node))
        elif ratio_from == "input":
            inputs.append(RATIO_INPUT)
            b.feeds[RATIO_INPUT] = np.array(ratio, np.float32)
        flags = ["absent"] + (["false", "true"] if bool_ok else [])
        if main:
            flags += [FLAG_INPUT] + ([TRAINING_MODE] if b.user_switch == "bool_scalar" else [])
        flag = draw(st.sampled_from(flags))
        if flag != "absent":
            inputs += [""] * (2 - len(inputs))
            if flag in (FLAG_INPUT, TRAINING_MODE):
                inputs.append(flag)
                b.feeds.setdefault(flag, np.array(False))
            else:
                inputs.append(b.const(where, flag == "true", BOOL, as_node=as_node))
        outputs = [out] + ([mask] if mask else [])
        if kind == "dropout":
            node = oh.make_node("Dropout", inputs, outputs, name=b.name("drop"))
        else:
            b.uses_ours = True
            node = oh.make_node(spec.OP_TYPE, inputs, outputs, domain=spec.DOMAIN,
                                name=b.name("sd"))
            axes = None if draw(st.booleans()) else sorted(
                draw(st.sets(st.integers(0, len(shape) - 1))))
            if axes is not None:
                node.attribute.append(oh.make_attribute(
                    spec.ATTR_SHARED_AXES, axes, attr_type=onnx.AttributeProto.INTS))
            shared = spec.default_shared_axes(len(shape)) if axes is None else axes
            noise = [1 if i in shared else d for i, d in enumerate(shape)]
        where.nodes.append(node)
    elif opset >= 9 and draw(st.booleans()):  # PyTorch dynamo: divide first
        noise = [d if draw(st.booleans()) else 1 for d in _static(shape)]
        zeros, u, keep, cast, scaled = (b.name(p) for p in ("z", "u", "keep", "m", "s"))
        keep_prob = b.const(where, 1.0 - ratio, FLOAT, as_node=as_node)
        dims = b.const(where, noise, TensorProto.INT64, [len(noise)], as_node=as_node)
        where.nodes += [
            oh.make_node("ConstantOfShape", [dims], [zeros]),
            oh.make_node("RandomUniformLike", [zeros], [u], name=b.name("rand")),
            oh.make_node("Less", [u, keep_prob], [keep]),
            oh.make_node("Cast", [keep], [cast], to=FLOAT),
            oh.make_node("Div", [cast, keep_prob], [scaled]),
            oh.make_node("Mul", [data, scaled], [out]),
        ]
    else:  # the generic form, valid from opset 7
        noise = [d if draw(st.booleans()) else 1 for d in shape]
        u, keep, cast, scaled = (b.name(p) for p in ("u", "keep", "m", "s"))
        keep_prob = b.const(where, 1.0 - ratio, FLOAT, as_node=as_node)
        factor = b.const(where, 1.0 / (1.0 - ratio), FLOAT, as_node=as_node)
        where.nodes += [
            oh.make_node("RandomUniform", [], [u], shape=_static(noise), name=b.name("rand")),
            oh.make_node("Less", [u, keep_prob], [keep]),
            oh.make_node("Cast", [keep], [cast], to=FLOAT),
            oh.make_node("Mul", [cast, factor], [scaled]),
            oh.make_node("Mul", [data, scaled], [out]),
        ]
    where.clean.append(oh.make_node("Identity", [data], [out]))
    if mask is None:
        return out
    mask_type = FLOAT if kind == "dropout" and opset < 10 else BOOL
    use = draw(st.sampled_from(("unused", "consumed", "graph output")[: 3 if main else 2]))
    if use == "consumed":  # y * Cast(mask): y itself while every element is kept
        as_float = mask
        if mask_type == BOOL:
            as_float = b.name("mf")
            where.nodes.append(oh.make_node("Cast", [mask], [as_float], to=FLOAT))
        used = b.name("ym")
        where.nodes.append(oh.make_node("Mul", [out, as_float], [used]))
        where.clean.append(oh.make_node("Mul", [out, b.const(where, 1.0, FLOAT,
                                                             as_node=as_node)], [used]))
        return used
    if use == "graph output":
        static = _static(noise)
        ones = b.name("ones")
        b.inits.append(oh.make_tensor(ones, mask_type, static, [1] * int(np.prod(static))))
        where.clean.append(oh.make_node("Identity", [ones], [mask]))
        b.outputs.append(oh.make_tensor_value_info(mask, mask_type, noise))
    return out


@st.composite
def dropout_models(draw: st.DrawFn) -> Case:
    """A valid model with dropout sites and its training-off twin (see the module doc)."""
    opset = draw(st.integers(7, 18))
    batch = draw(st.sampled_from((SHAPE[0], "N")))
    user_switch = draw(st.sampled_from(("none",) * 5 + ("bool_scalar", "bool[2]", "float")))
    b = _Builder(opset, user_switch)
    main = _Nodes(opset)
    shape = [batch, *SHAPE[1:]]
    current = "x"
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("Relu", "Neg", "Add", "Transpose")))
        out = b.name("v")
        if op == "Transpose":
            perm = [0, *draw(st.permutations([1, 2, 3]))]
            main.both(oh.make_node("Transpose", [current], [out], perm=perm))
            shape = [shape[p] for p in perm]
        elif op == "Add":
            main.both(oh.make_node("Add", [current, b.const(main, 0.5, FLOAT)], [out]))
        else:
            main.both(oh.make_node(op, [current], [out]))
        current = out
        where = draw(st.sampled_from(("none", "main", "main", "If", "Loop", "function")))
        if where == "main":
            current = draw(_site(b, main, current, shape, True, False))
            if draw(st.booleans()):  # the site's output is a graph output too
                b.outputs.append(oh.make_tensor_value_info(current, FLOAT, shape))
        elif where == "If":
            inner = _Nodes(opset)
            result = draw(_site(b, inner, current, shape, False, False))
            branch_out, other = b.name("branch"), b.name("same")
            inner.both(oh.make_node("Identity", [result], [branch_out]))
            else_g = oh.make_graph([oh.make_node("Identity", [current], [other])], "else", [],
                                   [oh.make_tensor_value_info(other, FLOAT, shape)])
            info = [oh.make_tensor_value_info(branch_out, FLOAT, shape)]
            out, name = b.name("if"), b.name("if")
            for nodes, body in ((main.nodes, inner.nodes), (main.clean, inner.clean)):
                nodes.append(oh.make_node("If", ["cond"], [out], name=name,
                                          then_branch=oh.make_graph(body, "then", [], info),
                                          else_branch=else_g))
            current = out
        elif where == "Loop":
            b.loop_below_13 |= opset < 13
            inner = _Nodes(opset)
            index, cond_in, carried = b.name("i"), b.name("cin"), b.name("carried")
            result = draw(_site(b, inner, carried, shape, False, False))
            cond_out, body_out = b.name("cout"), b.name("vout")
            inner.both(oh.make_node("Identity", [cond_in], [cond_out]))
            inner.both(oh.make_node("Identity", [result], [body_out]))
            ins = [oh.make_tensor_value_info(index, TensorProto.INT64, []),
                   oh.make_tensor_value_info(cond_in, BOOL, []),
                   oh.make_tensor_value_info(carried, FLOAT, shape)]
            outs = [oh.make_tensor_value_info(cond_out, BOOL, []),
                    oh.make_tensor_value_info(body_out, FLOAT, shape)]
            trips, true = b.const(main, 1, TensorProto.INT64), b.const(main, True, BOOL)
            out, name = b.name("loop"), b.name("loop")
            for nodes, body in ((main.nodes, inner.nodes), (main.clean, inner.clean)):
                nodes.append(oh.make_node("Loop", [trips, true, current], [out], name=name,
                                          body=oh.make_graph(body, "body", ins, outs)))
            current = out
        elif where == "function":
            inner = _Nodes(opset)
            result = draw(_site(b, inner, "v", shape, False, True))
            name = b.name("f")
            imports = [oh.make_opsetid("", opset)]
            if any(n.domain == spec.DOMAIN for n in inner.nodes):
                imports.append(oh.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))
            b.functions.append(oh.make_function("local", name, ["v"], [result], inner.nodes,
                                                imports))
            b.clean_functions.append(oh.make_function("local", name, ["v"], [result],
                                                      inner.clean, imports))
            out = b.name("call")
            main.both(oh.make_node(name, [current], [out], domain="local"))
            current = out

    inputs = [oh.make_tensor_value_info("x", FLOAT, [batch, *SHAPE[1:]]),
              oh.make_tensor_value_info("cond", BOOL, [])]
    feeds = {"x": (np.random.default_rng(1).random(SHAPE) + 1).astype(np.float32),
             "cond": np.array(True)}
    outputs = [oh.make_tensor_value_info(current, FLOAT, shape), *b.outputs]
    if user_switch == "none":
        b.feeds.pop(TRAINING_MODE, None)
    else:
        elem, dims, value = {"bool_scalar": (BOOL, [], np.array(False)),
                             "bool[2]": (BOOL, [2], np.array([False, True])),
                             "float": (FLOAT, [], np.array(0.5, np.float32))}[user_switch]
        b.feeds[TRAINING_MODE] = value
        inputs.append(oh.make_tensor_value_info(TRAINING_MODE, elem, dims))
        if draw(st.booleans()):  # the model uses its input for something of its own
            echo = b.name("echo")
            main.both(oh.make_node("Identity", [TRAINING_MODE], [echo]))
            outputs.append(oh.make_tensor_value_info(echo, elem, dims))
    for name, value in b.feeds.items():
        feeds[name] = value
        if name != TRAINING_MODE:
            inputs.append(oh.make_tensor_value_info(
                name, FLOAT if name == RATIO_INPUT else BOOL, []))
    outputs = list({o.name: o for o in outputs}.values())  # a name listed twice: once
    imports = [oh.make_opsetid("", opset)]
    if b.uses_ours:
        imports.append(oh.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))
    if b.functions:
        imports.append(oh.make_opsetid("local", 1))

    def build(nodes: list[onnx.NodeProto], functions: list[onnx.FunctionProto]
              ) -> onnx.ModelProto:
        graph = oh.make_graph(nodes, "g", inputs, outputs, b.inits)
        model = oh.make_model(graph, opset_imports=imports, functions=functions)
        model.ir_version = 8  # model-local functions; onnxruntime 1.17 reads up to 9
        return model

    return Case(build(main.nodes, b.functions), build(main.clean, b.clean_functions), feeds,
                opset, user_switch in ("bool[2]", "float"), b.loop_below_13)
