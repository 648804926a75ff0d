"""The same checks three ways: numpy reference op, portable model in onnxruntime
(no library loaded), portable model in onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from dropout_checks import (
    DTYPES,
    assert_drop_fraction,
    assert_identity,
    assert_structurally_valid,
    sample_data,
)
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from op_models import dropout_model, feeds, ort_session

import spatialdrop_onnx as sd
from spatialdrop_onnx import function_body, reference, spec


def _runner(kind: str, model: onnx.ModelProto):
    """A function feeds -> outputs for one of the three implementations."""
    if kind == "reference_op":
        evaluator = ReferenceEvaluator(model, new_ops=[reference.SpatialDropout])
        return lambda f: evaluator.run(None, f)
    portable = sd.make_portable(model)
    onnx.checker.check_model(portable, full_check=True)
    if kind == "onnxruntime":
        session = ort_session(portable)
        return lambda f: session.run(None, f)
    evaluator = ReferenceEvaluator(portable)
    return lambda f: evaluator.run(None, f)


RUNNERS = ["reference_op", "onnxruntime", "reference_evaluator"]
CASES = [((5, 12), None), ((3, 6, 7), [1]), ((3, 6, 4, 4), None), ((2, 4, 3, 3, 3), [-1, 1])]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axes"), CASES)
def test_structure_three_ways(runner, dtype, shape, axes):
    as_float = dtype == "bfloat16"  # onnxruntime's Python API has no bfloat16 arrays
    run = _runner(runner, dropout_model(shape, dtype, axes, io_as_float=as_float))
    data = sample_data(shape, DTYPES[dtype])
    fed = data.astype(np.float32) if as_float else data
    masks = []
    for _ in range(3):
        output, mask = run(feeds(fed, 0.4, True))
        output = output.astype(data.dtype) if as_float else output
        masks.append(assert_structurally_valid(data, output, 0.4, axes, mask))
    output, mask = run(feeds(fed, 0.4, False))
    assert_identity(fed, output, mask)


@pytest.mark.parametrize("runner", RUNNERS)
def test_drop_fraction_three_ways(runner):
    shape, axes, ratio = (40, 50, 6), [2], 0.3
    run = _runner(runner, dropout_model(shape, "float32", axes))
    data = sample_data(shape, np.dtype(np.float32))
    output, mask = run(feeds(data, ratio, True))
    keep = assert_structurally_valid(data, output, ratio, axes, mask)
    assert_drop_fraction(keep, ratio)
    second = run(feeds(data, ratio, True))[1]
    assert (second != mask).any(), "two runs gave the same mask"


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_edges_three_ways(runner, ratio):
    run = _runner(runner, dropout_model((3, 4, 5), "float32"))
    data = sample_data((3, 4, 5), np.dtype(np.float32))
    output, mask = run(feeds(data, ratio, True))
    if ratio == 0.0:
        assert_identity(data, output, mask)
    else:
        assert not mask.any() and (output == 0).all()


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("ratio", [1.5, -0.25])
def test_invalid_ratio_refused_three_ways(runner, ratio):
    """The reference op says why; onnxruntime names the failing check node.

    onnx's ReferenceEvaluator reports the guard's out-of-range Gather without
    the node name (documented limit), so only that it refuses is checked there.
    """
    run = _runner(runner, dropout_model((3, 4, 5), "float32"))
    expected = {"reference_op": r"ratio must be in \[0, 1\]",
                "onnxruntime": "check_ratio_in_0_1",
                "reference_evaluator": "out of bounds"}[runner]
    with pytest.raises(Exception, match=expected):
        run(feeds(sample_data((3, 4, 5), np.dtype(np.float32)), ratio, True))


def test_invalid_axes_for_runtime_rank_refused_in_onnxruntime():
    """Rank unknown when the model is made portable: the body's own check fires."""
    model = dropout_model((3, 4, 5), "float32", shared_axes=[3])
    del model.graph.input[0].type.tensor_type.shape.dim[:]
    model.graph.input[0].type.tensor_type.ClearField("shape")
    del model.graph.output[:]
    model.graph.output.append(oh.make_tensor_value_info("y", TensorProto.FLOAT, None))
    session = ort_session(sd.make_portable(model))
    with pytest.raises(Exception, match="check_shared_axes_valid_for_rank"):
        session.run(None, feeds(np.ones((3, 4, 5), np.float32), 0.5, True))


def test_default_axes_resolved_at_run_time_when_rank_unknown():
    model = dropout_model((3, 4, 5, 6), "float32", with_mask=False)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    portable = sd.make_portable(model)
    node = next(n for n in portable.graph.node if n.op_type == sd.OP_TYPE)
    assert not any(a.name == "shared_axes" for a in node.attribute)  # sentinel path
    output = ort_session(portable).run(None, feeds(sample_data((3, 4, 5, 6), np.float32), 0.5,
                                                   True))[0]
    assert_structurally_valid(sample_data((3, 4, 5, 6), np.float32), output, 0.5, None)


# --- make_portable: what it attaches, and where it looks ---

def _minimal_node_model(inputs: list[str], outputs: list[str], **attrs) -> onnx.ModelProto:
    node = oh.make_node(sd.OP_TYPE, inputs, outputs, domain=sd.DOMAIN, **attrs)
    graph_inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])]
    if "t" in inputs:
        graph_inputs.append(oh.make_tensor_value_info("t", TensorProto.BOOL, []))
    graph = oh.make_graph([node], "g", graph_inputs,
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17),
                                               oh.make_opsetid(sd.DOMAIN, 1)])


@pytest.mark.parametrize("runner", ["onnxruntime", "reference_evaluator"])
def test_omitted_optional_inputs_and_mask(runner):
    model = _minimal_node_model(["x", "", "t"], ["y"], seed=4)
    run = _runner(runner, model)
    data = sample_data((3, 4, 5), np.dtype(np.float32))
    (output,) = run({"x": data, "t": np.array(True)})
    assert_structurally_valid(data, output, 0.5, None)  # default ratio 0.5, default axes
    (output,) = run({"x": data, "t": np.array(False)})
    assert_identity(data, output)


def test_training_mode_omitted_means_inference():
    run = _runner("onnxruntime", _minimal_node_model(["x"], ["y"]))
    data = sample_data((2, 4, 5), np.dtype(np.float32))
    assert_identity(data, run({"x": data})[0])


def test_seeded_function_is_deterministic_per_session_and_varies_per_run():
    model = dropout_model((30, 40), "float32", shared_axes=[], seed=21)
    portable = sd.make_portable(model)
    data = np.ones((30, 40), np.float32)
    first_runs = [ort_session(portable).run(None, feeds(data, 0.5, True))[1] for _ in range(2)]
    np.testing.assert_array_equal(first_runs[0], first_runs[1])
    session = ort_session(portable)
    first, second = (session.run(None, feeds(data, 0.5, True))[1] for _ in range(2))
    assert (first != second).any()


def test_one_function_per_seed_and_idempotent():
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    nodes = [oh.make_node(sd.OP_TYPE, ["x"], ["a"], domain=sd.DOMAIN),
             oh.make_node(sd.OP_TYPE, ["a"], ["b"], domain=sd.DOMAIN, seed=1),
             oh.make_node(sd.OP_TYPE, ["b"], ["y"], domain=sd.DOMAIN, seed=-1)]
    graph = oh.make_graph(nodes, "g", [x],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                                oh.make_opsetid(sd.DOMAIN, 1)])
    portable = sd.make_portable(model)
    overloads = sorted(f.overload for f in portable.functions)
    # float data and ratio, rank 3 (default axes: [2]): float arithmetic, the noise a Slice
    # on axis 2; the generic body is always there, for calls that cannot resolve overloads.
    assert overloads == ["", "float_shared_2", "seed_1_float_shared_2", "seed_m1_float_shared_2"]
    assert sd.make_portable(portable) == portable
    onnx.checker.check_model(portable, full_check=True)
    data = np.ones((2, 3, 4), np.float32)
    assert_identity(data, ort_session(portable).run(None, {"x": data})[0])


def test_nodes_in_subgraphs_and_functions_get_bodies():
    inner = oh.make_node(sd.OP_TYPE, ["x", "", "t"], ["z"], domain=sd.DOMAIN, shared_axes=[1])
    branch = oh.make_graph([inner], "then", [],
                           [oh.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    identity = oh.make_graph([oh.make_node("Identity", ["x"], ["w"])], "else", [],
                             [oh.make_tensor_value_info("w", TensorProto.FLOAT, None)])
    local = oh.make_function(
        "my.funcs", "Wrap", ["v", "t"], ["u"],
        [oh.make_node(sd.OP_TYPE, ["v", "", "t"], ["u"], domain=sd.DOMAIN, seed=5)],
        [oh.make_opsetid("", 18), oh.make_opsetid(sd.DOMAIN, 1)])
    nodes = [oh.make_node("If", ["t"], ["m"], then_branch=branch, else_branch=identity),
             oh.make_node("Wrap", ["m", "t"], ["y"], domain="my.funcs")]
    graph = oh.make_graph(nodes, "g", [
        oh.make_tensor_value_info("x", TensorProto.FLOAT, [6, 8, 3]),
        oh.make_tensor_value_info("t", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [6, 8, 3])])
    model = oh.make_model(graph, functions=[local], opset_imports=[
        oh.make_opsetid("", 18), oh.make_opsetid(sd.DOMAIN, 1), oh.make_opsetid("my.funcs", 1)])
    portable = sd.make_portable(model)
    onnx.checker.check_model(portable, full_check=True)
    data = sample_data((6, 8, 3), np.dtype(np.float32))
    output = ort_session(portable).run(None, {"x": data, "t": np.array(True)})[0]
    # Two dropouts in a row: [1] shared then default (axis 2) shared: each (n, c) row or
    # (n, :, k) column is kept or dropped; every kept value is data * 2 * 2.
    nonzero = output != 0
    np.testing.assert_array_equal(output[nonzero], (data * 4)[nonzero])
    assert nonzero.any() and (~nonzero).any()


def test_opset_below_minimum_refused():
    model = dropout_model((2, 3), "float32", opset=13)
    with pytest.raises(ValueError, match=f"opset >= {function_body.MIN_OPSET}"):
        sd.make_portable(model)


def test_invalid_axes_refused_when_rank_known():
    with pytest.raises(ValueError, match="out of range"):
        sd.make_portable(dropout_model((2, 3, 4), "float32", shared_axes=[5]))


def test_sites_draw_independent_masks_in_onnxruntime():
    """onnxruntime seeds an unseeded random op with a process seed plus its node index in its
    graph; a draw inside each node's If branch sat at the same index of every branch, so all
    sites of a model drew the same numbers (equal noise sizes: equal masks)."""
    text = """<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>
        g (float[64,16] x, bool t) => (float[64,16] a, float[64,16] b) <float r = {0.5}> {
            a = org.spatialdrop.SpatialDropout<shared_axes = [1]>(x, r, t)
            b = org.spatialdrop.SpatialDropout<shared_axes = [1]>(x, r, t)
        }"""
    session = ort_session(sd.make_portable(onnx.parser.parse_model(text)))
    x = sample_data((64, 16), np.dtype(np.float32))
    a, b = session.run(None, {"x": x, "t": np.array(True)})
    agree = float(np.mean((a[:, 0] == 0) == (b[:, 0] == 0)))
    assert abs(agree - 0.5) < 4 * np.sqrt(0.25 / 64), agree  # independent: half agree


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_scale_within_one_ulp_of_the_reference(dtype):
    """Float data with a float ratio computes 1/(1-ratio) in float, not double (no double
    tensors): the scale is the reference's (double, rounded to T) or one ulp from it.

    Measured over every float ratio in [0, 1): float32 differs by one ulp at 4.1% of them
    (0.15 among the round ones; 25 of this grid's 201, more often at high ratios), float16
    rarely; double data or a double ratio is computed in double and exact (the cases above,
    whose ratio is double).
    """
    model = dropout_model((4096,), dtype)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT  # a float ratio
    portable = sd.make_portable(model)
    assert not any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.DOUBLE
                   for f in portable.functions if f.overload for n in f.node)
    session = ort_session(portable)
    np_dtype, bits = DTYPES[dtype], {"float32": np.int32, "float16": np.int16}[dtype]
    ratios = sorted({*np.linspace(0, 0.99, 199).astype(np.float32).tolist(), 0.15, 0.45})
    ulps = []
    for ratio in ratios:
        output = session.run(None, {"x": np.ones(4096, np_dtype),
                                    "ratio": np.array(ratio, np.float32),
                                    "training_mode": np.array(True)})[0]
        scale = output.max()
        assert set(np.unique(output).tolist()) <= {0.0, float(scale)}
        reference_scale = spec.kept_scale(np.float32(ratio), np_dtype)
        ulps.append(int(scale.view(bits)) - int(reference_scale.view(bits)))
    assert max(map(abs, ulps)) <= 1, ulps
    # measured on onnxruntime 1.32: 25 of 201 (0.15 among them); 1.21 rounds none of them off
    assert sum(u != 0 for u in ulps) <= 0.25 * len(ulps), ulps


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_inlined_body_is_written_with_plain_ops(dtype):
    """What runtimes with static shapes and converters need from the body ``inline``
    splices in: no If or subgraph, no shape computed from a value (the noise-shaped tensor
    is a Slice of the data), no double tensor unless the data is double, every node named."""
    model = dropout_model((3, 6, 4, 4), dtype)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT
    prepared = function_body.bodies_for_inlining(model)
    (specific,) = [f for f in prepared.functions if f.overload]
    ops = {n.op_type for n in specific.node}
    assert not ops & {"If", "Loop", "Scan", "ConstantOfShape", "Expand", "CastLike", "Shape"}
    assert not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in specific.node for a in n.attribute)
    doubles = [n.name for n in specific.node for a in n.attribute
               if (a.name == "to" and a.i == TensorProto.DOUBLE)
               or (a.name == "value" and a.t.data_type == TensorProto.DOUBLE)]
    assert bool(doubles) == (dtype == "float64"), doubles
    assert all(n.name for n in specific.node)
    assert len({n.name for n in specific.node}) == len(specific.node)
    (slice_node,) = [n for n in specific.node if n.op_type == "Slice"]
    assert slice_node.input[0] in ("data", "data_c")


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_portable_body_skips_the_work_with_training_off(dtype):
    """make_portable's body (onnxruntime, ReferenceEvaluator only) puts the full-size work
    in If(training_mode), whose else branch is the identity: with the plain form onnxruntime
    ran the product and a broadcasting Where in inference (docs/function-body.md). The draw
    stays outside the branch, over a shape made empty when the switch is off."""
    model = dropout_model((3, 6, 4, 4), dtype)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.FLOAT
    portable = sd.make_portable(model)
    for function in portable.functions:
        (select,) = [n for n in function.node if n.op_type == "If"]
        assert select.input[0] == "training_mode"
        assert [n.op_type for n in function.node].count("RandomUniformLike") == 1
        train, infer = _branch(select, "then_branch"), _branch(select, "else_branch")
        train_ops = [n.op_type for n in train.node]
        assert "Mul" in train_ops and "Where" in train_ops and "RandomUniformLike" not in train_ops
        assert [n.op_type for n in infer.node] == ["Identity", "ConstantOfShape"]
        assert infer.node[0].input[0] == "data"
        assert all(n.name for n in [*function.node, *train.node, *infer.node])


def test_portable_special_values_bit_for_bit():
    """Inference: negative zeros, infinities and NaN payloads come out as they went in;
    training: a dropped value is +0 whatever it was, a kept one twice it (ratio 0.5)."""
    data = np.array([-0.0, np.inf, -np.inf, np.nan, -1.5, 3.0], np.float32).reshape(1, 6, 1)
    data = np.concatenate([data, -data], axis=0)
    for runner in ("onnxruntime", "reference_evaluator"):
        output, mask = _runner(runner, dropout_model((2, 6, 1), "float32"))(
            feeds(data, 0.5, False))
        np.testing.assert_array_equal(output.view(np.int32), data.view(np.int32))
        assert mask.shape == (2, 6, 1) and mask.all()
        output, mask = _runner(runner, dropout_model((2, 6, 1), "float32"))(
            feeds(data, 1.0, True))
        assert not mask.any() and not output.view(np.int32).any()  # every bit zero: +0
        run = _runner(runner, dropout_model((64, 6, 1), "float32"))
        tiled = np.tile(data, (32, 1, 1))
        output, mask = run(feeds(tiled, 0.5, True))
        kept = np.broadcast_to(mask, tiled.shape)
        assert not output[~kept].view(np.int32).any()  # dropped: +0, even for NaN and inf
        # Kept: data * 2 (onnxruntime's Where returns a kept -0 as +0: it adds its two
        # selections; the values compare equal, NaN included).
        np.testing.assert_array_equal(output[kept], tiled[kept] * np.float32(2))
        assert mask.any() and not mask.all()
