"""Strip: every Dropout form and SpatialDropout folds to the identity (reliability probe 9).

Each case builds a small valid model, strips it, checks it with the full
onnx checker and compares onnxruntime outputs bit for bit with the original
run with training off.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from passes_helpers import (
    OUR_DOMAIN,
    all_nodes,
    assert_no_dropout,
    assert_same,
    count,
    flag,
    full_check,
    parse,
    run,
    sample,
)

import spatialdrop_onnx as sd

X = sample((2, 3, 4, 5))


def stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    result = sd.strip(model).model
    full_check(result)
    assert_no_dropout(result)
    return result


def test_opset7_ratio_attribute_and_consumed_float_mask() -> None:
    model = parse("""<ir_version: 7, opset_import: ["": 7]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, float[2,3,4,5] z) {
            d, m = Dropout<ratio: float = 0.3>(x)
            y = Relu(d)
            z = Add(m, x)
        }""")
    result = stripped(model)
    y, z = run(result, {"x": X})
    assert_same([y], run(model, {"x": X})[:1])
    # The consumed mask is "all kept": ones of the data type for Dropout-7..9. (onnxruntime's
    # Dropout-7..11 kernel writes zeros there in inference; the ONNX reference writes ones.)
    assert_same([z], [X + np.float32(1)])
    assert [o.name for o in result.graph.output] == ["y", "z"]


def test_opset10_consumed_bool_mask_becomes_all_true() -> None:
    # The ONNX reference says all true; onnxruntime's Dropout-10/11 kernel says all false.
    model = parse("""<ir_version: 7, opset_import: ["": 10]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, bool[2,3,4,5] m) {
            d, m = Dropout<ratio: float = 0.5>(x)
            y = Sigmoid(d)
        }""")
    result = stripped(model)
    y, mask = run(result, {"x": X})
    assert mask.dtype == np.bool_ and mask.shape == X.shape and mask.all()
    assert_same([y], run(model, {"x": X})[:1])


@pytest.mark.parametrize("opset", [12, 13, 18])
def test_ratio_and_training_mode_inputs(opset: int) -> None:
    model = parse(f"""<ir_version: 8, opset_import: ["": {opset}]>
        g (float[N,3,4,5] x, bool training_mode) => (float[N,3,4,5] y, float[N,3,4,5] w)
          <float ratio = {{0.25}}, bool training_mode = {{0}}> {{
            d, m = Dropout(x, ratio, training_mode)
            e = Dropout(d, ratio, training_mode)
            mf = Cast<to = 1>(m)
            y = Mul(e, mf)
            w = Tanh(e)
        }}""")
    result = stripped(model)
    assert [i.name for i in result.graph.input] == ["x"]  # the flag input went away
    assert not result.graph.initializer  # ratio and the flag's default are dead
    assert result.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_same(run(result, {"x": X}), run(model, {"x": X, "training_mode": flag(False)}))


def test_output_name_kept_when_dropout_feeds_graph_output_directly() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, float[2,3,4,5] z) {
            y = Dropout(x)
            z = Dropout(y)
        }""")
    result = stripped(model)
    assert [o.name for o in result.graph.output] == ["y", "z"]
    assert {n.op_type for n in result.graph.node} == {"Identity"}
    assert_same(run(result, {"x": X}), run(model, {"x": X}))


def test_chain_of_dropouts_and_several_consumers() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {
            a = Relu(x)
            b = Dropout(a)
            c = Dropout(b)
            d = Add(c, b)
            y = Mul(d, c)
        }""")
    result = stripped(model)
    assert [n.op_type for n in result.graph.node] == ["Relu", "Add", "Mul"]
    assert_same(run(result, {"x": X}), run(model, {"x": X}))


def test_node_names_metadata_and_unknown_ops_are_kept() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13, "com.example": 1],
                      producer_name: "unit", doc_string: "keep me">
        g (float[N,3,4,5] x) => (float[N,3,4,5] y) {
            a = Relu(x)
            b = Dropout(a)
            y = com.example.Mystery<alpha: float = 2.0>(b)
        }""")
    model.graph.node[0].name = "relu_0"
    model.graph.node[2].name = "mystery_0"
    oh.set_model_props(model, {"author": "tests"})
    result = stripped(model)
    assert [(n.name, n.op_type, list(n.input)) for n in result.graph.node] == [
        ("relu_0", "Relu", ["x"]), ("mystery_0", "Mystery", ["a"])]
    assert result.producer_name == "unit" and result.doc_string == "keep me"
    assert {p.key: p.value for p in result.metadata_props} == {"author": "tests"}
    assert any(o.domain == "com.example" for o in result.opset_import)
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_initializer_still_used_elsewhere_is_kept() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {0.5}> {
            d = Dropout(x, r)
            y = Mul(d, r)
        }""")
    result = stripped(model)
    assert [i.name for i in result.graph.initializer] == ["r"]
    assert_same(run(result, {"x": X}), run(model, {"x": X}))


def test_constant_nodes_feeding_only_dropouts_are_removed() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {
            r = Constant<value = float {0.5}>()
            t = Constant<value = bool {1}>()
            y = Dropout(x, r, t)
        }""")
    result = stripped(model)
    assert [n.op_type for n in result.graph.node] == ["Identity"]


LOOP_IF_SCAN = """<ir_version: 8, opset_import: ["": 13]>
    g (float[2,3,4,5] x, bool cond) => (float[2,3,4,5] y, float[2,3,4,5] s, float[2,3,4,5] u)
      <float ratio = {0.3}, bool t = {0}, int64 trips = {2}> {
        outer = Dropout(x, ratio, t)
        y = If(cond) <
            then_branch = then_g () => (float[2,3,4,5] a) {
                a0 = Relu(outer)
                a = Dropout(a0, ratio, t)
            },
            else_branch = else_g () => (float[2,3,4,5] b) {
                b = Dropout(outer, ratio, t)
            }>
        s = Loop(trips, cond, x) <
            body = body_g (int64 i, bool c, float[2,3,4,5] acc)
                       => (bool c_out, float[2,3,4,5] acc_out) {
                c_out = Identity(c)
                dropped, mask = Dropout(acc, ratio, t)
                mf = Cast<to = 1>(mask)
                acc_out = Add(dropped, mf)
            }>
        u = Scan(x) <num_scan_inputs = 1,
            body = scan_g (float[3,4,5] row) => (float[3,4,5] out) {
                out = Dropout(row, ratio, t)
            }>
    }"""


def test_loop_if_scan_bodies() -> None:
    model = parse(LOOP_IF_SCAN)
    result = stripped(model)
    for cond in (True, False):
        feeds = {"x": X, "cond": flag(cond)}
        assert_same(run(result, feeds), run(model, feeds))
    # Subgraph outputs that were dropout outputs keep their names through Identity.
    branches = {a.name: a.g for a in result.graph.node[0].attribute}
    assert [o.name for o in branches["then_branch"].output] == ["a"]
    assert not {"ratio", "t"} & {i.name for i in result.graph.initializer}


def test_model_local_function() -> None:
    model = parse("""<ir_version: 8, opset_import: ["": 13, "local": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {
            h = local.block(x)
            y = Dropout(h)
        }
        <domain: "local", opset_import: ["": 13]>
        block (a) => (b) {
            r = Constant<value = float {0.3}>()
            t = Constant<value = bool {0}>()
            c = Dropout(a, r, t)
            d, m = Dropout(c, r, t)
            mf = Cast<to = 1>(m)
            b = Mul(d, mf)
        }""")
    result = stripped(model)
    function = result.functions[0]
    assert [n.op_type for n in function.node] == ["Shape", "ConstantOfShape", "Cast", "Mul"]
    assert_same(run(result, {"x": X}), run(model, {"x": X}))


def _spatial_model(rank_known: bool, shared_axes: list[int] | None, use_mask: bool,
                   opset: int = 18) -> onnx.ModelProto:
    """x → [Squeeze with run-time axes, hiding the rank] → SpatialDropout → y[, mask]."""
    data = "x" if rank_known else "x_any_rank"
    nodes = [] if rank_known else [oh.make_node("Squeeze", ["x", "axes"], [data])]
    node = oh.make_node(sd.OP_TYPE, [data, "ratio", "training_mode"],
                        ["y", "mask"] if use_mask else ["y"], domain=OUR_DOMAIN, name="sd0")
    nodes.append(node)
    if shared_axes is not None:
        node.attribute.append(oh.make_attribute("shared_axes", shared_axes,
                                                attr_type=onnx.AttributeProto.INTS))
    outputs = [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])]
    if use_mask:
        outputs.append(oh.make_tensor_value_info("mask", TensorProto.BOOL,
                                                 ["n0", "n1", "n2", "n3"]))
    inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5]),
              oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])]
    if not rank_known:
        inputs.append(oh.make_tensor_value_info("axes", TensorProto.INT64, [0]))
    graph = oh.make_graph(
        nodes, "g", inputs,
        outputs,
        [oh.make_tensor("ratio", TensorProto.FLOAT, [], [0.4]),
         oh.make_tensor("training_mode", TensorProto.BOOL, [], [False])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset),
                                                oh.make_opsetid(OUR_DOMAIN, 1)])
    return sd.make_portable(model)


@pytest.mark.parametrize("rank_known,shared_axes,noise", [
    (True, None, (2, 3, 1, 1)),        # default axes
    (True, [-1, 1], (2, 1, 4, 1)),     # explicit, negative
    (False, None, (2, 3, 1, 1)),       # rank unknown: the noise shape is worked out at run time
    (False, [-1, 1], (2, 1, 4, 1)),
])
def test_spatial_dropout_with_consumed_mask(rank_known: bool, shared_axes: list[int] | None,
                                            noise: tuple[int, ...]) -> None:
    model = _spatial_model(rank_known, shared_axes, use_mask=True)
    result = stripped(model)
    feeds = {"x": X, "axes": np.zeros(0, np.int64)}
    y, mask = run(result, feeds)
    assert_same([y], [X])
    assert mask.dtype == np.bool_ and mask.shape == noise and mask.all()
    assert "training_mode" not in {i.name for i in result.graph.input}
    assert not result.functions and not result.graph.initializer


def test_spatial_dropout_function_and_domain_removed() -> None:
    model = _spatial_model(True, [2, 3], use_mask=False)
    assert any(f.domain == OUR_DOMAIN for f in model.functions)
    result = stripped(model)
    assert result.graph.node[0].op_type == "Identity" and result.graph.node[0].name == "sd0"
    assert_same(run(result, {"x": X}), run(model, {"x": X, "training_mode": flag(False)}))


def test_strip_is_idempotent_and_never_modifies_its_input() -> None:
    model = parse(LOOP_IF_SCAN)
    before = model.SerializeToString()
    once = sd.strip(model).model
    assert model.SerializeToString() == before
    assert sd.strip(once).model.SerializeToString() == once.SerializeToString()


def test_report_counts_folded_sites() -> None:
    result, report = sd.strip(parse(LOOP_IF_SCAN))
    assert report.folded == 5 and not report.unconvertible
    assert count(result, "Dropout") == 0 and all_nodes(result)
