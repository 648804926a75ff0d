"""``inline``: SpatialDropout as standard ops, run where our op cannot be.

The inlined models run in plain onnxruntime (no library), onnx.reference and
OpenVINO's CPU plugin; each is checked from the op's definition
(``dropout_checks``): whole slices dropped or exactly scaled, the mask agrees,
the drop rate within binomial error, masks that change from run to run within
one session, and the exact identity with training off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from dropout_checks import (
    assert_drop_fraction,
    assert_identity,
    assert_structurally_valid,
    sample_data,
)
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from passes_helpers import parse
from runtimes import OPENVINO_CONFIG, compile_openvino, openvino_core
from test_portable_loops import FEEDS as LOOP_FEEDS
from test_portable_loops import rnn_model

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.graph import model_scopes
from spatialdrop_onnx.inlining import name_random_ops

#: One SpatialDropout, default axes (2, 3), the switch as rewrite writes it (default false).
CHANNEL = """<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>
    g (float[N,16,4,4] x, bool training_mode) => (float[N,16,4,4] y, bool[N,16,1,1] mask)
      <float r = {0.3}, bool training_mode = {0}> {
        y, mask = org.spatialdrop.SpatialDropout(x, r, training_mode)
    }"""
#: Keras SpatialDropout1D layout with a seed, and an element-wise ONNX Dropout on a branch.
MIXED = """<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>
    g (float[N,40,6] x, bool training_mode) => (float[N,40,6] y, float[N,40,6] z)
      <float r = {0.25}, float h = {0.5}, bool training_mode = {0}> {
        y = org.spatialdrop.SpatialDropout<shared_axes = [1], seed = 7>(x, r, training_mode)
        a = Relu(x)
        b = Dropout(a, h, training_mode)
        z = Relu(b)
    }"""
RATIO = 0.3


def _nested() -> onnx.ModelProto:
    """A seeded SpatialDropout inside a user function, an unseeded one inside a Loop body."""
    in_function = oh.make_node("SpatialDropout", ["a", "r", "training_mode"], ["b"],
                               domain=sd.DOMAIN, seed=5)
    block = oh.make_function(
        "user", "Block", ["a", "training_mode"], ["c"],
        [oh.make_node("Constant", [], ["r"], value=oh.make_tensor("r", TensorProto.FLOAT, [],
                                                                   [RATIO])),
         in_function, oh.make_node("Identity", ["b"], ["c"])],
        [oh.make_opsetid("", 18), oh.make_opsetid(sd.DOMAIN, 1)])
    body = oh.make_graph(
        [oh.make_node("SpatialDropout", ["x", "r2", "training_mode"], ["u"], domain=sd.DOMAIN),
         oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Identity", ["u"], ["u_out"])],
        "body", [oh.make_tensor_value_info("i", TensorProto.INT64, []),
                 oh.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         oh.make_tensor_value_info("u_out", TensorProto.FLOAT, ["N", 16, 4, 4])])
    shape = ["N", 16, 4, 4]
    graph = oh.make_graph(
        [oh.make_node("Block", ["x", "training_mode"], ["y"], domain="user"),
         oh.make_node("Loop", ["trips", "go"], ["s"], body=body)],
        "nested",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, shape),
         oh.make_tensor_value_info("s", TensorProto.FLOAT, [2, *shape])],
        [oh.make_tensor("trips", TensorProto.INT64, [], [2]),
         oh.make_tensor("go", TensorProto.BOOL, [], [True]),
         oh.make_tensor("r2", TensorProto.FLOAT, [], [RATIO]),
         oh.make_tensor("training_mode", TensorProto.BOOL, [], [False])])
    model = oh.make_model(graph, functions=[block], opset_imports=[
        oh.make_opsetid("", 18), oh.make_opsetid("user", 1), oh.make_opsetid(sd.DOMAIN, 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {"channel": parse(CHANNEL), "mixed": parse(MIXED), "nested": _nested()}


@pytest.fixture(scope="module")
def inlined(models: dict[str, onnx.ModelProto]) -> dict[str, sd.PassResult]:
    return {name: sd.inline(model) for name, model in models.items()}


def _run_inlined(kind: str, model: onnx.ModelProto):
    """The inlined model as it is, in one of the three runtimes that run it."""
    if kind == "onnxruntime":
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if kind == "reference":
        evaluator = ReferenceEvaluator(model)
        return lambda feeds: evaluator.run(None, feeds)
    return compile_openvino(model)


RUNTIMES = ["onnxruntime", "reference", "openvino"]


@pytest.mark.parametrize("name", ["channel", "mixed", "nested"])
def test_no_trace_of_our_domain(name, models, inlined):
    model, report = inlined[name]
    onnx.checker.check_model(model, full_check=True)
    for scope in model_scopes(model, include_ours=True):
        assert all(node.domain != sd.DOMAIN for node in scope.nodes), scope.path
    assert all(f.domain != sd.DOMAIN for f in model.functions)
    for owner in [model, *model.functions]:
        assert all(o.domain != sd.DOMAIN for o in owner.opset_import)
    source = models[name]
    # The interface is the source's (inputs, outputs, types), but the switch must be fed:
    # OpenVINO would take an input with an initializer default for a constant.
    assert list(model.graph.input) == list(source.graph.input)
    assert list(model.graph.output) == list(source.graph.output)
    assert "training_mode" not in {i.name for i in model.graph.initializer}
    assert report.switch_default is False
    expected = {"channel": (1, 0, 0), "mixed": (2, 1, 1), "nested": (2, 0, 1)}[name]
    assert (report.inlined, report.dropout_lowered, report.seeded) == expected


@pytest.mark.parametrize("kind", RUNTIMES)
def test_channel_structure_rate_and_identity(kind, inlined):
    run = _run_inlined(kind, inlined["channel"].model)
    x = sample_data((48, 16, 4, 4), np.dtype(np.float32))
    keeps = []
    for _ in range(3):
        y, mask = run({"x": x, "training_mode": np.array(True)})
        keeps.append(assert_structurally_valid(x, y, RATIO, None, mask))
    assert not np.array_equal(keeps[0], keeps[1]), "two runs of one session drew the same mask"
    assert_drop_fraction(np.stack(keeps), RATIO)  # 3 x 768 decisions, 4 binomial sd
    y, mask = run({"x": x, "training_mode": np.array(False)})
    assert_identity(x, y, mask)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_seeded_spatial_and_elementwise_dropout(kind, inlined):
    model = inlined["mixed"].model
    run = _run_inlined(kind, model)
    x = sample_data((64, 40, 6), np.dtype(np.float32))
    y, z = run({"x": x, "training_mode": np.array(True)})
    keep = assert_structurally_valid(x, y, 0.25, [1])  # one decision per (row, channel)
    assert_drop_fraction(keep, 0.25)
    # The ONNX Dropout branch trains element by element (lowered, so no optimiser removes it).
    assert_drop_fraction(assert_structurally_valid(x, z, 0.5, []), 0.5)
    y, z = run({"x": x, "training_mode": np.array(False)})
    assert_identity(x, y)
    assert_identity(x, z)


def test_seeded_inlined_model_repeats_in_new_sessions(inlined):
    """A seed survives inlining: onnxruntime's seeded RandomUniformLike restarts per session."""
    model = inlined["mixed"].model
    x = sample_data((8, 40, 6), np.dtype(np.float32))
    feeds = {"x": x, "training_mode": np.array(True)}
    first, second = (ort.InferenceSession(model.SerializeToString(),
                                          providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                     for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_nested_sites_inlined_in_place(inlined):
    """The function keeps its seed (make_portable must use the unseeded body there), the
    Loop body its site; onnxruntime runs both with channel structure."""
    model = inlined["nested"].model
    (block,) = model.functions
    seeds = [a.f for node in block.node if node.op_type == "RandomUniformLike"
             for a in node.attribute if a.name == "seed"]
    assert seeds == [5.0]
    x = sample_data((32, 16, 4, 4), np.dtype(np.float32))
    for kind in ("onnxruntime", "openvino"):
        source = model if kind == "onnxruntime" else sd.inline(
            _nested(), all_functions=True).model
        y, s = _run_inlined(kind, source)({"x": x, "training_mode": np.array(True)})
        keeps = [assert_structurally_valid(x, y, RATIO, None),
                 *(assert_structurally_valid(x, s[i], RATIO, None) for i in range(2))]
        assert_drop_fraction(np.stack(keeps), RATIO)
        assert not np.array_equal(keeps[1], keeps[2]), "the loop's iterations share a mask"


def test_all_functions_leaves_no_function(models):
    model, report = sd.inline(models["nested"], all_functions=True)
    assert not model.functions and report.functions_inlined == 1
    assert {o.domain for o in model.opset_import} == {""}
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("form", ["raw", "portable"])
def test_openvino_refuses_our_op_even_with_its_function(form, models):
    """Why inline exists: OpenVINO has no SpatialDropout and ignores model-local functions."""
    model = models["channel"] if form == "raw" else sd.make_portable(models["channel"])
    assert model.functions or form == "raw"
    core = openvino_core()
    with pytest.raises(RuntimeError, match="SpatialDropout"):
        core.read_model(model.SerializeToString())


def test_cli_inline(models, tmp_path: Path, capsys: pytest.CaptureFixture):
    src, out = tmp_path / "mixed.onnx", tmp_path / "inlined.onnx"
    onnx.save(models["mixed"], src)
    assert main(["inline", str(src), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inlined"] == 2 and report["dropout_lowered"] == 1
    assert all(n.domain != sd.DOMAIN for n in onnx.load(out).graph.node)
    assert main(["inline", str(src), "-o", str(src)]) == 4  # the input is never overwritten
    assert main(["inline", str(src), "-o", str(out)]) == 0
    assert "training_mode is now a required input (its default was false)" in \
        capsys.readouterr().err
    assert main(["inline", str(out), "-o", str(out), "--in-place", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_cli_inline_bad_axes_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = tmp_path / "bad.onnx"
    bad = CHANNEL.replace("SpatialDropout(", "SpatialDropout<shared_axes = [4]>(")
    onnx.save(onnx.parser.parse_model(bad), src)
    assert main(["inline", str(src), "-o", str(tmp_path / "out.onnx")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shared_axes" in err


def test_unknown_rank_takes_the_default_axes():
    """No rank, no shared_axes: the body resolves the default at run time (the inliner would
    otherwise drop the attribute reference and leave an empty Constant)."""
    node = oh.make_node("SpatialDropout", ["x", "r", "training_mode"], ["y"], domain=sd.DOMAIN)
    graph = oh.make_graph(
        [node], "unranked",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, None),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [oh.make_tensor("r", TensorProto.FLOAT, [], [RATIO])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                                oh.make_opsetid(sd.DOMAIN, 1)])
    run = _run_inlined("onnxruntime", sd.inline(model).model)
    x = sample_data((40, 12, 3, 2), np.dtype(np.float32))
    keep = assert_structurally_valid(x, run({"x": x, "training_mode": np.array(True)})[0],
                                     RATIO, None)
    assert_drop_fraction(keep, RATIO)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_twin_sites_draw_independent_masks(kind):
    """Two unseeded sites on one tensor: independent draws. onnxruntime seeds unseeded random
    ops by node index within a graph; OpenVINO merges identical subgraphs, random ones too."""
    model = sd.inline(parse(CHANNEL.replace(
        "y, mask = org.spatialdrop.SpatialDropout(x, r, training_mode)",
        "y = org.spatialdrop.SpatialDropout(x, r, training_mode)\n"
        "        mask = org.spatialdrop.SpatialDropout(x, r, training_mode)").replace(
        "bool[N,16,1,1] mask", "float[N,16,4,4] mask"))).model
    run = _run_inlined(kind, model)
    x = sample_data((16, 16, 4, 4), np.dtype(np.float32))
    agree = []
    for _ in range(3):
        a, b = run({"x": x, "training_mode": np.array(True)})
        agree.append(float(np.mean((a == 0) == (b == 0))))
    expected = RATIO**2 + (1 - RATIO) ** 2  # both dropped or both kept
    assert abs(np.mean(agree) - expected) < 4 * np.sqrt(expected * (1 - expected) / 768), agree


#: Sites OpenVINO merged when only identical input lists got distinct draws: the same data
#: with different ratio inputs (a Keras RNN's gate masks), different data of one shape
#: (a shared dynamic batch makes the shapes equal), and two calls of one user function.
SIBLINGS = {
    "ratios": """a = org.spatialdrop.SpatialDropout(x, r, training_mode)
                 b = org.spatialdrop.SpatialDropout(x, q, training_mode)""",
    "tensors": """n = Neg(x)
                  a = org.spatialdrop.SpatialDropout(x, r, training_mode)
                  b = org.spatialdrop.SpatialDropout(n, q, training_mode)""",
    "calls": """a = user.Drop(x, training_mode)
                b = user.Drop(x, training_mode)""",
}


def _siblings(body: str) -> onnx.ModelProto:
    return parse(f"""<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1, "user": 1]>
        g (float[N,16,4,4] x, bool training_mode) => (float[N,16,4,4] a, float[N,16,4,4] b)
          <float r = {{0.5}}, float q = {{0.5}}> {{
            {body}
        }}
        <domain: "user", opset_import: ["": 18, "org.spatialdrop": 1]>
        Drop (v, t) => (w) {{
            h = Constant <value = float {{0.5}}> ()
            w = org.spatialdrop.SpatialDropout(v, h, t)
        }}""")


@pytest.mark.parametrize("case", list(SIBLINGS))
def test_sibling_sites_draw_independent_masks_in_openvino(case, tmp_path: Path):
    """OpenVINO seeds every unseeded draw alike and merges draws whose shapes are equal
    (symbolically), whatever their inputs: every site of a graph draws through a node
    of its own (read from a file, as users do)."""
    path = tmp_path / "siblings.onnx"
    onnx.save(sd.inline(_siblings(SIBLINGS[case]), all_functions=True).model, path)
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU")
    x = sample_data((64, 16, 4, 4), np.dtype(np.float32))
    agree = []
    for _ in range(3):
        results = compiled.create_infer_request().infer({"x": x, "training_mode": True})
        a, b = (np.array(results[output]) for output in compiled.outputs)
        keep_a = assert_structurally_valid(x, a, 0.5, None)
        keep_b = assert_structurally_valid(-x if case == "tensors" else x, b, 0.5, None)
        agree.append(float(np.mean(keep_a == keep_b)))
    # Independent masks agree on half the 3 x 1024 decisions; one mask on all of them.
    assert abs(np.mean(agree) - 0.5) < 4 * np.sqrt(0.25 / 3072), agree


@pytest.mark.parametrize("site", [False, True])
def test_tf2onnx_like_loop_becomes_openvino_loadable(site: bool, tmp_path: Path):
    """A tf2onnx-like RNN Loop (a weight passed through, the state a rank-2 scan output),
    which OpenVINO refuses from a file, loads after ``inline`` and agrees with onnxruntime
    and onnx.reference; without a site too (a stripped model: the early return)."""
    raw = rnn_model()
    if site:  # a channel dropout on the initial state [N, C], one decision per row
        raw.graph.node.append(oh.make_node(
            sd.OP_TYPE, ["h0", "", "training_mode"], ["h0_drop"], domain=sd.DOMAIN,
            shared_axes=[1]))
        raw.graph.input.append(oh.make_tensor_value_info("training_mode", TensorProto.BOOL, []))
        raw.graph.output.append(oh.make_tensor_value_info("h0_drop", TensorProto.FLOAT, None))
        raw.opset_import.append(oh.make_opsetid(sd.DOMAIN, 1))
    feeds = LOOP_FEEDS | ({"training_mode": np.array(False)} if site else {})
    path = tmp_path / "loop.onnx"
    onnx.save(raw, path)
    with pytest.raises(Exception, match="canonical inputs size"):
        openvino_core().read_model(str(path))
    expected = sd.inference_session(raw).run(None, feeds)
    model, report = sd.inline(raw)
    assert report.inlined == int(site)
    onnx.save(model, path)
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", OPENVINO_CONFIG)
    results = compiled.create_infer_request().infer(feeds)
    runs = {"openvino": [np.array(results[output]) for output in compiled.outputs],
            "reference": ReferenceEvaluator(model).run(None, feeds)}
    for kind, got in runs.items():
        assert [g.shape for g in got] == [e.shape for e in expected], kind
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=kind)


@pytest.mark.parametrize("name", ["channel", "mixed"])
def test_inlined_form_is_plain_and_named_for_tract(name, models, inlined):
    """No If, no shape from a value, no double, every node named; tract reads a random
    op's kind from its name (``*Like`` by the end, ``RandomNormal*`` by the start)."""
    model = inlined[name].model
    nodes = list(model.graph.node)
    assert not {n.op_type for n in nodes} & {"If", "Loop", "ConstantOfShape", "Expand",
                                              "CastLike"}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert TensorProto.DOUBLE not in {v.type.tensor_type.elem_type
                                      for v in inferred.graph.value_info}
    assert all(n.name for n in nodes if n not in models[name].graph.node)  # ours, not the user's
    draws = [n for n in nodes if n.op_type == "RandomUniformLike"]
    assert draws and all(n.name.endswith("Like") for n in draws)


@pytest.mark.parametrize("op_type", ["RandomUniform", "RandomUniformLike", "RandomNormal",
                                     "RandomNormalLike"])
@pytest.mark.parametrize("name", ["", "RandomNormal_0", "noise_Like", "draw__1"])
def test_random_ops_renamed_as_tract_reads_them(op_type, name):
    node = oh.make_node(op_type, ["x"] if op_type.endswith("Like") else [], ["u"], name=name)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [oh.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    model = oh.make_model(graph)
    name_random_ops(model)
    renamed = model.graph.node[0].name
    assert renamed.endswith("Like") == op_type.endswith("Like"), renamed
    assert renamed.startswith("RandomNormal") == op_type.startswith("RandomNormal"), renamed
    assert renamed == name or (name or "u") in renamed  # kept when tract reads it right
