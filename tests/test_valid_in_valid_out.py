"""Valid in, valid out (issue 9, item 17): one test per class of model that broke it.

Every input passes ``onnx.checker.check_model(full_check=True)``; the output of
rewrite and strip must pass it too and compute the same inference outputs in
onnxruntime, or the pass refuses with a one-line reason. The property test
(``test_passes_property.py``) draws these forms at random; the cases here pin
each bug it found.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from passes_helpers import (
    assert_no_dropout,
    assert_same,
    flag,
    full_check,
    op_types,
    parse,
    random_mask,
    run,
    sample,
    session,
)

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.errors import UserError

X = sample((2, 3, 4, 5))


# --- An omitted ratio does not hide a constant training flag -------------------------


@pytest.mark.parametrize("op", ["Dropout", "org.spatialdrop.SpatialDropout"])
@pytest.mark.parametrize("outputs", ["y", "y, mask"])
def test_constant_flag_is_rewired_when_the_ratio_is_omitted(op: str, outputs: str) -> None:
    # Dropout(x, "", true): the rule used not to match an omitted ratio, so rewrite
    # returned the model unchanged, training on for good.
    model = parse(f"""<ir_version: 8, opset_import: ["": 18, "org.spatialdrop": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <bool t = {{1}}> {{
            {outputs} = {op}(x, "", t)
        }}""")
    result = sd.rewrite(model)
    full_check(result.model)
    assert [s.training_mode for s in result.report.rewired] == ["training_mode"]
    assert_same(run(result.model, {"x": X}), [X])  # default false: the identity
    # SpatialDropout draws 6 decisions per run (all kept: 1 in 64), so look at a few runs of
    # one session (an unseeded stream moves on from run to run, not from session to session).
    training = session(result.model)
    runs = [run(training, {"x": X, "training_mode": flag(True)})[0] for _ in range(8)]
    assert any((y == 0).any() for y in runs) and not any(np.array_equal(y, X) for y in runs)


# --- The model's own training_mode ------------------------------------------------------

FOREIGN_SWITCH = """<ir_version: 8, opset_import: ["": 18]>
    g (float[2,3,4,5] x, {switch} training_mode) => (float[2,3,4,5] y, {switch} echo)
      <float r = {{0.5}}, bool t = {{1}}> {{
        d = Dropout(x, r, t)
        y = Relu(d)
        echo = Identity(training_mode)
    }}"""


@pytest.mark.parametrize("switch", ["bool[2]", "float", "bool[1]", "int64"])
def test_rewrite_refuses_a_training_mode_of_another_type(switch: str) -> None:
    model = parse(FOREIGN_SWITCH.format(switch=switch))
    with pytest.raises(UserError, match="already has an input 'training_mode' that is not a "
                                        "boolean scalar; rename it"):
        sd.rewrite(model)
    # strip folds the dropout and leaves the model's own input alone.
    result = sd.strip(model).model
    full_check(result)
    assert_no_dropout(result)
    ours = next(i for i in result.graph.input if i.name == "training_mode")
    assert ours == next(i for i in model.graph.input if i.name == "training_mode")
    assert "training_mode" not in {i.name for i in result.graph.initializer}


@pytest.mark.parametrize("switch", ["bool[2]", "float"])
def test_rewrite_with_nothing_to_do_leaves_a_foreign_training_mode_alone(switch: str) -> None:
    # Nothing to rewrite: the input comes back unchanged. It used to gain a scalar
    # bool default for its bool[2] / float input named training_mode (invalid).
    model = parse(FOREIGN_SWITCH.format(switch=switch).replace("bool t = {1}",
                                                                "bool t = {0}")
                  .replace("d = Dropout(x, r, t)", "d = Dropout(x, r)"))
    for default in (False, True):
        result = sd.rewrite(model, training_default=default)
        full_check(result.model)
        assert result.model == model


def test_a_boolean_scalar_training_mode_is_the_switch() -> None:
    model = parse(FOREIGN_SWITCH.format(switch="bool"))
    result = sd.rewrite(model).model
    full_check(result)
    assert [i.name for i in result.graph.input].count("training_mode") == 1
    assert [n.input[2] for n in result.graph.node if n.op_type == "Dropout"] == ["training_mode"]


# --- Several default-domain opset imports ---------------------------------------------

TWO_IMPORTS = """<ir_version: 8, opset_import: ["": 13, "ai.onnx": {other}]>
    g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {{0.5}}, bool t = {{1}}> {{
        y = Dropout(x, r, t)
    }}"""


@pytest.mark.parametrize("other", [13, 18])
def test_several_default_domain_imports_are_refused(other: int, tmp_path) -> None:  # noqa: ANN001
    model = parse(TWO_IMPORTS.format(other=other))  # the checker accepts it
    for run_pass in (sd.rewrite, sd.strip, sd.inspect):
        with pytest.raises(UserError, match=r"imports the default ONNX domain 2 times "
                                            rf"\(\(empty\):13, ai.onnx:{other}\); keep one"):
            run_pass(model)
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    assert main(["strip", str(path), "-o", str(tmp_path / "out.onnx")]) == 3
    assert not (tmp_path / "out.onnx").exists()


# --- Below opset 15, rewrite converts the opset: functions and float masks survive ---------


def test_rewrite_below_opset_15_converts_model_local_functions() -> None:
    # onnx.version_converter drops model-local functions: the output called a function
    # that no longer existed (the checker passes it; onnxruntime cannot load it).
    model = parse(f"""<ir_version: 8, opset_import: ["": 8, "local": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) {{ y = local.block(x) }}
        <domain: "local", opset_import: ["": 8]>
        block (a) => (b) {{
            k = Constant<value = float {{0.75}}>()
            s = Constant<value = float {{1.3333334}}>()
            {random_mask("a", "b")}
        }}""")
    result = sd.rewrite(model)
    full_check(result.model)
    assert result.report.opset_converted_from == 8 and len(result.report.converted) == 1
    block = next(f for f in result.model.functions if f.name == "block")
    assert [(o.domain, o.version) for o in block.opset_import if o.domain == ""] == [("", 15)]
    assert "SpatialDropout" in [n.op_type for n in block.node]
    assert_same(run(result.model, {"x": X}), [X])


def test_rewrite_below_opset_10_keeps_a_consumed_float_mask_valid() -> None:
    # Dropout-7's mask has the data type; the converted Dropout-13's is bool, and the
    # converter leaves Mul(y, mask) reading a bool (invalid). The mask is cast back.
    model = parse(f"""<ir_version: 8, opset_import: ["": 7]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, float[2,3,4,5] z)
          <float k = {{0.5}}, float s = {{2}}> {{
            d, m = Dropout<ratio: float = 0.5>(x)
            y = Mul(d, m)
            {random_mask("x", "z", "[2, 3, 4, 5]", tag="r_")}
        }}""")
    result = sd.rewrite(model)
    full_check(result.model)
    assert result.report.opset_converted_from == 7
    assert "CastLike" in op_types(result.model)
    y, _ = run(result.model, {"x": X})
    assert_same([y], [X])  # the converted mask is all ones, as ONNX's reference says


# --- Strip: every mask form at every opset ---------------------------------------------


def _dropout_with_mask(opset: int, rank_known: bool) -> onnx.ModelProto:
    mask_type = "float" if opset < 10 else "bool"
    data = "x" if rank_known else "xr"  # Reshape to a run-time shape hides the rank
    node = (f"d, m = Dropout<ratio: float = 0.3>({data})" if opset < 12
            else f"d, m = Dropout({data}, r, t)")
    return parse(f"""<ir_version: 8, opset_import: ["": {opset}]>
        g (float[2,3,4,5] x, int64[n] s) => (float[a,b,c,d] y, {mask_type}[a,b,c,d] m,
                                              float[a,b,c,d] z)
          <float r = {{0.3}}, bool t = {{0}}> {{
            xr = Reshape(x, s)
            {node}
            y = Relu(d)
            mf = Cast<to = 1>(m)
            z = Add(mf, d)
        }}""")


@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13])
@pytest.mark.parametrize("rank_known", [True, False], ids=["rank known", "rank unknown"])
def test_strip_dropout_mask_forms(opset: int, rank_known: bool) -> None:
    # Opset 7 with the rank unknown used to be refused (no ConstantOfShape, no Expand,
    # Tile needs the rank); the mask is now Cast(Not(Less(x, x))), all true in any rank.
    model = _dropout_with_mask(opset, rank_known)
    result = sd.strip(model).model
    full_check(result)
    assert_no_dropout(result)
    y, mask, z = run(result, {"x": X, "s": np.array(X.shape, np.int64)})
    assert_same([y], [np.maximum(X, 0)])
    assert mask.shape == X.shape and mask.dtype == (np.float32 if opset < 10 else np.bool_)
    assert (mask == 1).all()
    assert_same([z], [X + np.float32(1)])


def _spatial_with_mask(opset: int, axes: list[int] | None) -> onnx.ModelProto:
    node = oh.make_node(sd.OP_TYPE, ["x", "r", "t"], ["d", "m"], domain=sd.DOMAIN)
    if axes is not None:
        node.attribute.append(oh.make_attribute("shared_axes", axes,
                                                attr_type=onnx.AttributeProto.INTS))
    graph = oh.make_graph(
        [node, oh.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
         oh.make_node("Mul", ["d", "mf"], ["y"])], "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5]),
         oh.make_tensor_value_info("m", TensorProto.BOOL, ["n0", "n1", "n2", "n3"])],
        [oh.make_tensor("r", TensorProto.FLOAT, [], [0.4]),
         oh.make_tensor("t", TensorProto.BOOL, [], [True])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset),
                                                oh.make_opsetid(sd.DOMAIN, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13])
@pytest.mark.parametrize("axes,noise", [(None, (2, 3, 1, 1)), ([-1, 0], (1, 3, 4, 1))])
def test_strip_spatial_mask_forms(opset: int, axes: list[int] | None,
                                  noise: tuple[int, ...]) -> None:
    # Below opset 9, Constant holds float types only: the int64 noise-shape constants
    # and the bool ones are Constant(float) + Cast (they used to be invalid Constants).
    model = _spatial_with_mask(opset, axes)
    full_check(model)
    result = sd.strip(model).model
    full_check(result)
    assert_no_dropout(result)
    y, mask = run(result, {"x": X})
    assert_same([y], [X])
    assert mask.dtype == np.bool_ and mask.shape == noise and mask.all()
    if opset < 9:
        constants = [n for n in result.graph.node if n.op_type == "Constant"]
        assert {a.t.data_type for n in constants for a in n.attribute} == {TensorProto.FLOAT}


@pytest.mark.parametrize("declared", [-1, 2**40])
def test_strip_refuses_when_built_masks_expose_a_contradiction(declared: int, tmp_path) -> None:  # noqa: ANN001
    # Found by the mutation fuzz: onnx infers no shape for a Dropout-7 mask, so the
    # checker cannot see that z's declared shape contradicts Add(mask, x). The folded
    # mask's shape is inferable: the output would fail the checker the input passed.
    model = parse(f"""<ir_version: 7, opset_import: ["": 7]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, float[2,3,{declared},5] z) {{
            d, m = Dropout<ratio: float = 0.3>(x)
            y = Relu(d)
            z = Add(m, x)
        }}""")  # parse() runs the full checker: it passes
    with pytest.raises(UserError, match=r"declares shapes or types that contradict what it "
                                        r"computes, .*differ in dimension 2: \(4\) vs"):
        sd.strip(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["strip", str(path), "-o", str(tmp_path / "o.onnx")]) == 3
    assert not (tmp_path / "o.onnx").exists()
