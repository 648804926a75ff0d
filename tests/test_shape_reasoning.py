"""Shared axes come from the noise-shape expression, per scope, not from names or later shapes.

Each case is a small ONNX-text model; the rewritten model must have the expected
``shared_axes`` and, run in onnxruntime with training on, drop whole slices
exactly along them (structure checked on the outputs, not only on attributes).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from dropout_checks import assert_structurally_valid
from passes_helpers import all_nodes, full_check, sample

import spatialdrop_onnx as sd

#: A DropPath-like mask inside a function, its noise shape read from another value's Shape:
#: the function's input ``z`` is named like the main graph's input ``z`` (exporters name
#: values val_0, val_1, ... in every function, so such collisions are normal).
COLLIDING = """<ir_version: 10, opset_import: ["": 18, "local": 1]>
main (float[2,4,3,5] x, float[{B},7] z, float[2,7] w) => (float[2,4,3,5] y, float[{B},7] z2) {{
    y = local.F(x, w)
    z2 = Identity(z)
}}
<domain: "local", opset_import: ["": 18]>
F (a, z) => (y) {{
    s = Shape<start=0, end=1>(z)
    four = Constant<value = int64[1] {{4}}>()
    one = Constant<value = int64[1] {{1}}>()
    noise = Concat<axis=0>(s, four, one, one)
    zeros = ConstantOfShape(noise)
    u = RandomUniformLike<dtype=1>(zeros)
    keep = Constant<value = float {{0.75}}>()
    lt = Less(u, keep)
    m = Cast<to=1>(lt)
    sm = Div(m, keep)
    y = Mul(a, sm)
}}
"""


def _spatial_axes(model: onnx.ModelProto) -> list[list[int]]:
    return [list(next(a.ints for a in n.attribute if a.name == "shared_axes"))
            for n in all_nodes(model) if n.op_type == sd.OP_TYPE]


@pytest.mark.parametrize("batch", [1, 2])
def test_function_value_named_like_a_main_graph_value_gets_its_own_shape(batch: int) -> None:
    """The review's repro: with B = 1 a name-keyed lookup made the batch axis shared."""
    model = onnx.parser.parse_model(COLLIDING.format(B=batch))
    onnx.checker.check_model(model, full_check=True)
    result, report = sd.rewrite(model)
    full_check(result)
    assert [list(s.shared_axes) for s in report.converted] == [[2, 3]]
    assert _spatial_axes(result) == [[2, 3]]
    x = sample((2, 4, 3, 5))
    feeds = {"x": x, "z": sample((batch, 7)), "w": sample((2, 7)),
             "training_mode": np.array(True)}
    session = sd.inference_session(result)
    keeps = [assert_structurally_valid(x, session.run(["y"], feeds)[0], 0.25, [2, 3])
             for _ in range(8)]
    # Per-sample decisions: across runs both samples are sometimes treated differently.
    assert any(not np.array_equal(k[0], k[1]) for k in keeps)


#: The same mask in a function called with two different shapes.
TWO_CALLS = """<ir_version: 10, opset_import: ["": 18, "local": 1]>
main (float[2,4,3,5] x, float[3,4,6,2] v) => (float[2,4,3,5] y, float[3,4,6,2] t) {
    y = local.G(x)
    t = local.G(v)
}
<domain: "local", opset_import: ["": 18]>
G (a) => (y) {
    s = Shape<start=0, end=1>(a)
    four = Constant<value = int64[1] {4}>()
    one = Constant<value = int64[1] {1}>()
    noise = Concat<axis=0>(s, four, one, one)
    zeros = ConstantOfShape(noise)
    u = RandomUniformLike<dtype=1>(zeros)
    keep = Constant<value = float {0.6}>()
    lt = Less(u, keep)
    m = Cast<to=1>(lt)
    sm = Div(m, keep)
    y = Mul(a, sm)
}
"""


def test_mask_in_a_function_whose_call_sites_differ() -> None:
    model = onnx.parser.parse_model(TWO_CALLS)
    onnx.checker.check_model(model, full_check=True)
    result, report = sd.rewrite(model)
    full_check(result)
    assert [list(s.shared_axes) for s in report.converted] == [[2, 3]]
    x, v = sample((2, 4, 3, 5)), sample((3, 4, 6, 2), seed=1)
    session = sd.inference_session(result)
    for _ in range(4):
        y, t = session.run(None, {"x": x, "v": v, "training_mode": np.array(True)})
        assert_structurally_valid(x, y, 0.4, [2, 3])
        assert_structurally_valid(v, t, 0.4, [2, 3])


def _opaque_chain(sites: int) -> onnx.ModelProto:
    """``sites`` channel-dropout masks in a chain, each behind an op onnx cannot infer.

    The noise shape is ``Concat(Shape(t)[0:1], [C], [1], [1])`` of the tensor it
    multiplies, as exporters write it; everything after the first opaque op is
    shapeless to onnx shape inference.
    """
    lines, previous = [], "x"
    for i in range(sites):
        lines += [
            f"t{i} = ex.Opaque({previous})",
            f"s{i} = Shape<start=0, end=1>(t{i})",
            f"n{i} = Concat<axis=0>(s{i}, ch, one, one)",
            f"z{i} = ConstantOfShape(n{i})",
            f"u{i} = RandomUniformLike<dtype=1>(z{i})",
            f"k{i} = Less(u{i}, keep)",
            f"m{i} = Cast<to=1>(k{i})",
            f"q{i} = Div(m{i}, keep)",
            f"d{i} = Mul(t{i}, q{i})",
        ]
        previous = f"d{i}"
    body = "\n    ".join(lines)
    text = f"""<ir_version: 10, opset_import: ["": 18, "ex": 1]>
    main (float[N,3,4,4] x) => (float[N,3,4,4] {previous})
      <int64[1] ch = {{3}}, int64[1] one = {{1}}, float keep = {{0.7}}> {{
    {body}
    }}"""
    return onnx.parser.parse_model(text)


def test_long_chain_behind_shapeless_ops_converts_every_site() -> None:
    """No pass cap, no downstream inference: 12 consecutive sites all convert."""
    result, report = sd.rewrite(_opaque_chain(12))
    assert len(report.converted) == 12 and not report.unconvertible
    assert _spatial_axes(result) == [[2, 3]] * 12
    assert not {"RandomUniformLike", "Less"} & {n.op_type for n in all_nodes(result)}


UNKNOWN_AXIS = """<ir_version: 10, opset_import: ["": 18]>
main (float[2,4,3,5] x, float[2,4,1,1] p) => (float[2,4,3,5] y) <float keep = {0.7}> {
    s = Shape(p)
    zeros = ConstantOfShape(s)
    u = RandomUniformLike<dtype=1>(zeros)
    k = Less(u, keep)
    m = Cast<to=1>(k)
    q = Div(m, keep)
    y = Mul(x, q)
}
"""


def test_noise_dims_of_another_tensor_use_its_known_sizes() -> None:
    """``Shape(p)`` with p = [2,4,1,1]: the 1s are known sizes, so axes 2, 3 are shared."""
    result, report = sd.rewrite(onnx.parser.parse_model(UNKNOWN_AXIS))
    assert [list(s.shared_axes) for s in report.converted] == [[2, 3]]
    assert _spatial_axes(result) == [[2, 3]]


def test_noise_dim_that_cannot_be_shown_equal_is_refused() -> None:
    """The same with p's sizes unknown: axis 2 might be 1 at run time, so no guess is made."""
    text = UNKNOWN_AXIS.replace("float[2,4,1,1] p", "float[A,B,C,D] p")
    result, report = sd.rewrite(onnx.parser.parse_model(text))
    assert not report.converted
    (site,) = report.unconvertible
    assert "cannot be shown to equal the data dim" in site.reason
    assert any(n.op_type == "RandomUniformLike" for n in result.graph.node)


def test_noise_shape_of_the_data_itself_is_element_wise_whatever_its_rank() -> None:
    text = """<ir_version: 10, opset_import: ["": 18, "ex": 1]>
    main (float[2,4,3,5] x) => (y) <float keep = {0.7}> {
        t = ex.Opaque(x)
        s = Shape(t)
        zeros = ConstantOfShape(s)
        u = RandomUniformLike<dtype=1>(zeros)
        k = Less(u, keep)
        m = Cast<to=1>(k)
        q = Div(m, keep)
        y = Mul(t, q)
    }"""
    _, report = sd.rewrite(onnx.parser.parse_model(text))
    assert [(s.becomes, list(s.shared_axes)) for s in report.converted] == [("Dropout", [])]


def test_a_declared_rank_needs_no_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank and element type are read from a declaration with unknown dimensions; the whole
    model's shape inference (seconds on large graphs) runs only for what is not declared."""
    from spatialdrop_onnx.graph import types

    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[N, 3, W] x) => (float[N, 3, W] y) {
            t = Relu(x)
            y = Relu(t)
        }""")
    calls: list[str] = []

    def inferred(model_: onnx.ModelProto, scopes: list) -> list[dict]:
        calls.append("inferred")
        return [{"t": types.ValueType(onnx.TensorProto.FLOAT, (None, 3, None))}]

    monkeypatch.setattr(types, "_inferred_tables", inferred)
    facts = types.type_facts(model)
    main = types.model_scopes(model)[0]
    assert facts.rank_of(main, "x") == 3
    assert facts.elem_type_of(main, "y") == onnx.TensorProto.FLOAT
    assert calls == []
    assert facts.rank_of(main, "t") == 3  # undeclared: inference, once
    assert calls == ["inferred"]
