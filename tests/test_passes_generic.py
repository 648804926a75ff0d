"""The generic random-mask rule, rewrite inside subgraphs and functions, and its negatives.

Models are written in the ONNX text syntax; each is checked, rewritten,
checked again and run in onnxruntime with training off (must equal the
model without dropout) and on (noise-slice structure).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from passes_helpers import (
    assert_no_dropout,
    assert_same,
    check_noise_slices,
    count,
    flag,
    full_check,
    parse,
    run,
    sample,
    session,
)

import spatialdrop_onnx as sd
from spatialdrop_onnx.errors import UserError

X = sample((2, 4, 3, 5))
HEADER = '<ir_version: 8, opset_import: ["": 18]>'
CONSTS = "<float r = {0.25}, float k = {0.75}, float s = {1.3333333333}, float zero = {0}>"


def model(body: str, inputs: str = "float[2,4,3,5] x") -> onnx.ModelProto:
    return parse(f"""{HEADER}
        g ({inputs}) => (float[2,4,3,5] y) {CONSTS} {{
            {body}
        }}""")


# (name, body, expected shared axes, expected ratio)
POSITIVE = [
    ("random_uniform_shape_attr_mask_scaled", """
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", [2, 3], 0.25),
    ("keep_below_divide_first", """
        u = RandomUniform<shape = [2, 4, 1, 5]>()
        keep = Less(u, k)
        m = Cast<to = 1>(keep)
        md = Div(m, k)
        y = Mul(md, x)""", [2], 0.25),
    ("threshold_first_scale_after_divide", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        keep = LessOrEqual(r, u)
        m = Cast<to = 1>(keep)
        xm = Mul(x, m)
        y = Div(xm, k)""", [1, 2, 3], 0.25),
    ("scale_before_mask", """
        u = RandomUniform<shape = [1, 4, 1, 1]>()
        keep = Greater(k, u)
        m = Cast<to = 1>(keep)
        xs = Mul(x, s)
        y = Mul(xs, m)""", [0, 2, 3], 0.25),
    ("where_form", """
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = Greater(u, r)
        xs = Mul(x, s)
        y = Where(keep, xs, zero)""", [2, 3], 0.25),
    ("uniform_range_not_0_1", """
        u = RandomUniform<shape = [2, 4, 1, 1], low = -1.0, high = 1.0>()
        t = Constant<value = float {-0.5}>()
        keep = GreaterOrEqual(u, t)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", [2, 3], 0.25),
    ("elementwise_like_data", """
        u = RandomUniformLike(x)
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", [], 0.25),
    ("noise_rank_lower_than_data", """
        u = RandomUniform<shape = [3, 1]>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", [0, 1, 3], 0.25),
]


@pytest.mark.parametrize("name,body,axes,ratio", POSITIVE, ids=[p[0] for p in POSITIVE])
def test_generic_forms(name: str, body: str, axes: list[int], ratio: float) -> None:
    source = model(body)
    (site,) = sd.inspect(source)
    assert site.kind == "random-subgraph" and list(site.shared_axes) == list(axes)
    assert math.isclose(site.ratio, ratio, rel_tol=1e-6)
    assert site.rule.startswith("generic_random_mask")
    rewritten = sd.rewrite(source, elementwise="spatial").model
    full_check(rewritten)
    assert count(rewritten, "RandomUniform") + count(rewritten, "RandomUniformLike") == 0
    assert_same(run(rewritten, {"x": X, "training_mode": flag(False)}), [X])
    training = session(rewritten)
    outputs = [run(training, {"x": X, "training_mode": flag(True)})[0] for _ in range(8)]
    for output in outputs:
        check_noise_slices(X, output, site.ratio, axes)
    stripped = sd.strip(source).model
    full_check(stripped)
    assert_no_dropout(stripped)
    assert_same(run(stripped, {"x": X}), [X])


def test_noise_shape_read_from_another_tensor() -> None:
    """Concat(Shape(z)[0:1], 4, 1, 1): the batch dim comes from a different input."""
    source = parse(f"""{HEADER}
        g (float[N,4,3,5] x, float[N,7] z) => (float[N,4,3,5] y) {CONSTS} {{
            b = Shape<start = 0, end = 1>(z)
            c4 = Constant<value = int64[1] {{4}}>()
            c1 = Constant<value = int64[1] {{1}}>()
            noise = Concat<axis = 0>(b, c4, c1, c1)
            zeros = ConstantOfShape(noise)
            u = RandomUniformLike<seed = 7.0>(zeros)
            keep = Less(u, k)
            xk = Div(x, k)
            y = Where(keep, xk, zero)
        }}""")
    (site,) = sd.inspect(source)
    assert list(site.shared_axes) == [2, 3]
    rewritten = sd.rewrite(source).model
    full_check(rewritten)
    node = next(n for n in rewritten.graph.node if n.op_type == sd.OP_TYPE)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == {
        "shared_axes": [2, 3], "seed": 7}
    # The dead noise-shape arithmetic went; the other input stays (it is an input).
    assert {n.op_type for n in rewritten.graph.node} == {"Constant", sd.OP_TYPE}
    z = np.zeros((2, 7), np.float32)
    assert_same(run(rewritten, {"x": X, "z": z, "training_mode": flag(False)}), [X])


NEGATIVE = [
    ("noise_dim_neither", """
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x1, ms)""", "float[2,1,3,5] x1", "noise dim 1 is 4, neither 1 nor the data dim 1"),
    ("threshold_is_an_input", """
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = GreaterOrEqual(u, t)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", "float[2,4,3,5] x, float t", "is not a constant scalar"),
    ("wrong_scale", """
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        two = Constant<value = float {2.0}>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, two)
        y = Mul(x, ms)""", "float[2,4,3,5] x", "not 1/(1-ratio)"),
    ("normal_noise", """
        u = RandomNormalLike(x)
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", "float[2,4,3,5] x", "no rule matches"),
    ("noise_shape_unknown", """
        zeros = ConstantOfShape(shape)
        u = RandomUniformLike(zeros)
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        y = Mul(x, ms)""", "float[2,4,3,5] x, int64[4] shape",
     "the noise shape cannot be worked out"),
]


@pytest.mark.parametrize("name,body,inputs,reason", NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_generic_near_misses(name: str, body: str, inputs: str, reason: str) -> None:
    if name == "noise_dim_neither":
        source = parse(f"""{HEADER}
            g ({inputs}) => (float[2,4,3,5] y) {CONSTS} {{ {body} }}""")
    else:
        source = model(body, inputs)
    (site,) = sd.inspect(source)
    assert site.kind == "unconvertible" and reason in site.reason, site
    rewritten, report = sd.rewrite(source)
    assert len(report.unconvertible) == 1
    assert count(rewritten, sd.OP_TYPE) == 0
    full_check(rewritten)  # untouched, still valid


SITE = """
        u_{out} = RandomUniform<shape = [2, 4, 1, 1]>()
        keep_{out} = GreaterOrEqual(u_{out}, r)
        m_{out} = Cast<to = 1>(keep_{out})
        ms_{out} = Mul(m_{out}, s)
        {out} = Mul({data}, ms_{out})"""


def test_rewrite_inside_if_and_loop_bodies() -> None:
    source = parse(f"""{HEADER}
        g (float[2,4,3,5] x, bool c) => (float[2,4,3,5] y, float[2,4,3,5] w)
          <float r = {{0.25}}, float s = {{1.3333333333}}, int64 n = {{2}}> {{
            y = If(c) <
                then_branch = t () => (float[2,4,3,5] a) {{ {SITE.format(out="a", data="x")} }},
                else_branch = e () => (float[2,4,3,5] b) {{ b = Identity(x) }}>
            w = Loop(n, c, x) <
                body = lb (int64 i, bool ci, float[2,4,3,5] acc)
                          => (bool co, float[2,4,3,5] acc_out) {{
                    co = Identity(ci)
                    {SITE.format(out="acc_out", data="acc")}
                }}>
        }}""")
    sites = sd.inspect(source)
    assert [s.graph for s in sites] == ["main/If/then_branch", "main/Loop/body"]
    rewritten = sd.rewrite(source).model
    full_check(rewritten)
    assert count(rewritten, sd.OP_TYPE) == 2
    assert [i.name for i in rewritten.graph.input] == ["x", "c", "training_mode"]
    for cond in (True, False):
        feeds = {"x": X, "c": flag(cond), "training_mode": flag(False)}
        assert_same(run(rewritten, feeds), [X, X])
    y, w = run(rewritten, {"x": X, "c": flag(True), "training_mode": flag(True)})
    check_noise_slices(X, y, 0.25, [2, 3])
    assert_same(run(sd.strip(rewritten).model, {"x": X, "c": flag(True)}), [X, X])


def test_rewrite_inside_a_function_threads_training_mode() -> None:
    source = parse(f"""<ir_version: 8, opset_import: ["": 18, "local": 1]>
        g (float[2,4,3,5] x) => (float[2,4,3,5] y, float[2,4,3,5] v) {{
            y = local.block(x)
            v = local.outer(x)
        }}
        <domain: "local", opset_import: ["": 18]>
        block (d) => (o) {{
            r = Constant<value = float {{0.25}}>()
            s = Constant<value = float {{1.3333333333}}>()
            t = Constant<value = bool {{1}}>()
            {SITE.format(out="o1", data="d")}
            o = Dropout(o1, r, t)
        }}
        <domain: "local", opset_import: ["": 18, "local": 1]>
        outer (d) => (o) {{
            o = local.block(d)
        }}""")
    sites = sd.inspect(source)
    assert {s.graph for s in sites} == {"function local.block"}
    rewritten, report = sd.rewrite(source)
    full_check(rewritten)
    assert len(report.converted) == 1 and len(report.rewired) == 1
    functions = {f.name: f for f in rewritten.functions if f.domain == "local"}
    assert list(functions["block"].input) == ["d", "training_mode"]
    assert list(functions["outer"].input) == ["d", "training_mode"]
    calls = [n for n in rewritten.graph.node if n.domain == "local"]
    assert all(list(n.input) == ["x", "training_mode"] for n in calls)
    # onnxruntime cannot resolve a function *overload* called from inside another
    # model-local function (make_portable gives nodes of unknown type the
    # "via_double" overload), so the session uses the native kernel here.
    native = ort.InferenceSession(rewritten.SerializeToString(), sd.session_options(),
                                  providers=["CPUExecutionProvider"])
    assert_same(run(native, {"x": X, "training_mode": flag(False)}), [X, X])
    y, v = run(native, {"x": X, "training_mode": flag(True)})
    assert not np.array_equal(y, X) and not np.array_equal(v, X)
    for source_model in (rewritten, source):
        stripped = sd.strip(source_model).model
        full_check(stripped)
        assert [i.name for i in stripped.graph.input] == ["x"]
        assert all(list(f.input) == ["d"] for f in stripped.functions)
        assert all(list(n.input) == ["x"] for n in stripped.graph.node)
        assert_same(run(stripped, {"x": X}), [X, X])
    assert sd.rewrite(rewritten).model.SerializeToString() == rewritten.SerializeToString()


def test_existing_training_mode_input_is_reused_and_validated() -> None:
    source = model(SITE.format(out="y", data="x"), "float[2,4,3,5] x, bool training_mode")
    rewritten = sd.rewrite(source).model
    assert [i.name for i in rewritten.graph.input] == ["x", "training_mode"]
    clash = model(SITE.format(out="y", data="x"), "float[2,4,3,5] x, float training_mode")
    with pytest.raises(UserError, match="not a boolean scalar"):
        sd.rewrite(clash)


def test_low_opset_model_is_converted() -> None:
    source = parse("""<ir_version: 7, opset_import: ["": 12]>
        g (float[2,4,3,5] x) => (float[2,4,3,5] y) <float r = {0.25}, float s = {1.3333333333}> {
            u = RandomUniform<shape = [2, 4, 1, 1]>()
            keep = GreaterOrEqual(u, r)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(x, ms)
        }""")
    rewritten, report = sd.rewrite(source)
    assert report.opset_converted_from == 12
    full_check(rewritten)
    assert next(o.version for o in rewritten.opset_import if o.domain == "") >= 15
    assert_same(run(rewritten, {"x": X, "training_mode": flag(False)}), [X])


def test_model_without_sites_is_returned_unchanged() -> None:
    source = model("y = Relu(x)")
    assert sd.rewrite(source).model.SerializeToString() == source.SerializeToString()
    assert sd.inspect(source) == []


def test_rewrite_keeps_untouched_parts() -> None:
    """Node names, unknown ops, metadata, dynamic dims and value_info survive a rewrite."""
    source = parse(f"""<ir_version: 8, opset_import: ["": 18, "com.example": 1],
                        producer_name: "unit", doc_string: "keep me">
        g (float[N,4,3,5] x) => (float[N,4,3,5] y) {CONSTS} {{
            a = Relu(x)
            b = com.example.Mystery<alpha: float = 2.0>(a)
            u = RandomUniformLike(b)
            keep = GreaterOrEqual(u, r)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(b, ms)
        }}""")
    for index, name in enumerate(("relu_0", "mystery_0", "rand", "ge", "cast", "scale", "site")):
        source.graph.node[index].name = name
    source.graph.value_info.append(onnx.helper.make_tensor_value_info(
        "a", onnx.TensorProto.FLOAT, ["N", 4, 3, 5]))
    onnx.helper.set_model_props(source, {"author": "tests"})
    rewritten = sd.rewrite(source).model
    full_check(rewritten)
    nodes = [(n.name, n.op_type) for n in rewritten.graph.node]
    assert nodes[:2] == [("relu_0", "Relu"), ("mystery_0", "Mystery")]
    assert ("site", "Dropout") in nodes
    assert rewritten.producer_name == "unit" and rewritten.doc_string == "keep me"
    assert {p.key: p.value for p in rewritten.metadata_props} == {"author": "tests"}
    assert [v.name for v in rewritten.graph.value_info] == ["a"]
    assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert rewritten.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
