"""``inline --unroll-loops``: a Loop written out step by step where that is exactly what it
computes (``passes.loop_unrolling``), and left, named with the reason, where it is not.

The written-out model must give the Loop's own results: against numpy's recurrence and
onnxruntime on the original, in onnxruntime, onnx.reference and tract (which runs no Loop).
The converted seed model's encoder Loop is written out in ``test_keras_rnn_runtimes.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from runtimes import compile_tract

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.passes.loop_unrolling import unroll_loops

W = np.array([1.0, 0.5, 0.25], np.float32)
B = np.array([0.1, 0.2, 0.3], np.float32)


def _loop_model(steps: int = 4, condition: str = "c2 = Identity(c)", trips: str = "M",
                loop_condition: str = '""', body_extra: str = "",
                opset: int = 17) -> onnx.ModelProto:
    """x -> a Loop of ``steps`` steps of s = tanh(s * w + i + b), states and scan output.

    ``condition`` makes the body's c2; a counter state k (0, 1, ...) is carried for it."""
    text = f"""<ir_version: 8, opset_import: ["": {opset}]>
    g (float[N,3] x) => (float[N,3] final, int64 count, float[{steps},N,3] scanned)
      <int64 M = {{{steps}}}, int64 zero = {{0}}, bool run = {{1}},
       float[3] w = {{1.0, 0.5, 0.25}}> {{
        final, count, scanned = Loop({trips}, {loop_condition}, x, zero)
          <body = step (int64 i, bool c, float[N,3] s, int64 k) =>
                       (bool c2, float[N,3] s2, int64 k2, float[N,3] y)
           <float[3] b = {{0.1, 0.2, 0.3}}, int64 one = {{1}}, int64 limit = {{3}}> {{
            fi = Cast<to=1>(i)
            t = Mul(s, w)
            t2 = Add(t, fi)
            t3 = Add(t2, b)
            s2 = Tanh(t3)
            y = Identity(s2)
            k2 = Add(k, one)
            {body_extra}
            {condition}
        }}>
    }}"""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def _expected(x: np.ndarray, steps: int) -> tuple[np.ndarray, int, np.ndarray]:
    """The recurrence in numpy: the final state, the counter and the stacked states."""
    state, stacked = x, []
    for i in range(steps):
        state = np.tanh(state * W + i + B)
        stacked.append(state)
    return state, steps, np.stack(stacked)


def _x() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)


def _check(results: list[np.ndarray], steps: int) -> None:
    final, count, stacked = _expected(_x(), steps)
    np.testing.assert_allclose(results[0], final, rtol=1e-5, atol=1e-6)
    assert int(results[1]) == count
    np.testing.assert_allclose(results[2], stacked, rtol=1e-5, atol=1e-6)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize(("condition", "loop_condition"), [
    ("c2 = Identity(c)", '""'),  # no condition: the body passes the (absent: true) one on
    ("c2 = Identity(c)", "run"),  # a constant true
    ("c2 = Less(k2, limit)", "run"),  # tf2onnx's counter: true after steps 0, 1 (k2 = 1, 2)
])
def test_a_loop_of_constant_steps_is_written_out(opset, condition, loop_condition):
    steps = 3
    model = _loop_model(steps, condition, loop_condition=loop_condition, opset=opset)
    _check(ort.InferenceSession(model.SerializeToString()).run(None, {"x": _x()}), steps)
    written = onnx.ModelProto()
    written.CopyFrom(model)
    report = unroll_loops(written)
    assert (report.unrolled, report.steps, report.left) == (("final",), steps, ())
    onnx.checker.check_model(written, full_check=True)
    assert "Loop" not in _ops(written)
    assert "Less" not in _ops(written)  # the proved conditions' nodes are gone
    assert "M" not in {i.name for i in written.graph.initializer}  # nothing reads the count
    _check(ort.InferenceSession(written.SerializeToString()).run(None, {"x": _x()}), steps)
    _check(ReferenceEvaluator(written).run(None, {"x": _x()}), steps)
    _check(compile_tract(written)({"x": _x()}), steps)


@pytest.mark.parametrize(("model", "why"), [
    (_loop_model(4, "c2 = Less(k2, limit)", loop_condition="run"),
     "its condition ends it before its trip count"),  # k2 = 3 after step 2: false
    (_loop_model(4, "c2 = Less(k2, limit)", loop_condition="run", trips="zero"),
     "trip count 0 is outside 1..4096"),
    (_loop_model(4, "r = ReduceMax<keepdims=0>(s2)\n c2 = Less(r, w_max)\n",
                 body_extra="w_max = ReduceMax<keepdims=0>(w)"),
     "its condition depends on the model's inputs"),
    (_loop_model(4, "u = RandomUniformLike(s2)\n c2 = Identity(c)"),
     "its body draws random numbers (RandomUniformLike)"),
])
def test_a_loop_that_is_not_exactly_its_steps_is_left_with_the_reason(model, why):
    before = model.SerializeToString()
    report = unroll_loops(model)
    assert report.unrolled == () and report.steps == 0
    assert len(report.left) == 1 and report.left[0].startswith("final: "), report.left
    assert why in report.left[0]
    assert model.SerializeToString() == before  # untouched


def _hostile(condition_nodes: str, extra_initializers: str = "") -> onnx.ModelProto:
    """A Loop of 30 steps whose condition comes from a counter state shaped by the file."""
    return onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["": 17]>
    g (float[N,3] x) => (float[N,3] final) <int64 M = {{30}}, bool run = {{1}},
                                             int64 zero = {{0}}{extra_initializers}> {{
        final, count = Loop(M, run, x, zero)
          <body = step (int64 i, bool c, float[N,3] s, k) => (bool c2, float[N,3] s2, k2)
           <int64[2] pair = {{1, 2}}, int64[1] axis = {{-1}}> {{
            s2 = Tanh(s)
            {condition_nodes}
        }}>
    }}""")


@pytest.mark.parametrize(("condition", "initializers", "why"), [
    # The counter doubles each step (2**30 elements by the end): evaluated only if read.
    ("ku = Unsqueeze(k, axis)\n k2 = Add(ku, pair)\n c2 = Identity(c)\n"
     " r = ReduceMin<keepdims=0>(k2)\n",  # (unused: c2 does not read it)
     "", None),
    ("ku = Unsqueeze(k, axis)\n k2 = Add(ku, pair)\n c2b = Less(k2, pair)\n"
     " c2 = Identity(c2b)", "", "could not be shown to stay small"),
    ("k2 = Add(k, zero)\n c2 = Less(k2, big)", ", int64[100] big = {" +
     ", ".join(["5"] * 100) + "}", "reads a large or external tensor"),
])
def test_a_condition_is_evaluated_only_on_small_values(condition, initializers, why):
    """Files from the internet choose the condition: it is evaluated only through
    element-wise ops whose every value has at most 64 elements."""
    report = unroll_loops(_hostile(condition, initializers))
    if why is None:
        assert report.unrolled == ("final",), report.left
    else:
        assert report.unrolled == () and why in report.left[0], report.left


def test_a_trip_count_computed_at_run_time_is_left():
    model = _loop_model(4)
    trips = onnx.helper.make_node("Shape", ["x"], ["n_shape"], start=0, end=1)
    squeeze = onnx.helper.make_node("Squeeze", ["n_shape"], ["n"])
    model.graph.node.insert(0, squeeze)
    model.graph.node.insert(0, trips)
    model.graph.node[2].input[0] = "n"
    report = unroll_loops(model)
    assert report.left == ("final: its trip count is not a constant (computed at run time, or "
                           "absent)",)


def test_loops_in_subgraphs_are_named_and_left():
    """A Loop inside an If branch stays (only main-graph Loops are written out)."""
    inner = _loop_model(2)
    branch = onnx.helper.make_graph(list(inner.graph.node), "then", [], list(inner.graph.output))
    other = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], [n]) for n in ("f2", "c2", "s2")],
        "else", [], [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                     for n in ("f2", "c2", "s2")])
    flag = onnx.helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])
    node = onnx.helper.make_node("If", ["flag"], ["a", "b", "c"], then_branch=branch,
                                 else_branch=other, name="choose")
    graph = onnx.helper.make_graph([node], "g", [*inner.graph.input, flag],
                                   [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                       None)
                                    for n in ("a", "b", "c")],
                                   initializer=list(inner.graph.initializer))
    model = onnx.helper.make_model(graph, opset_imports=list(inner.opset_import),
                                   ir_version=inner.ir_version)
    report = unroll_loops(model)
    assert report.unrolled == ()
    assert len(report.left) == 1 and "inside a subgraph or function" in report.left[0]
    assert "choose" in report.left[0]


def test_cli_inline_unroll_loops(tmp_path: Path, capsys: pytest.CaptureFixture):
    src, out = tmp_path / "loop.onnx", tmp_path / "out.onnx"
    onnx.save(_loop_model(3), src)
    assert main(["inline", str(src), "-o", str(out), "--unroll-loops", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["loops_unrolled"], report["unrolled_steps"], report["loops_left"]) == (
        ["final"], 3, [])
    _check(ort.InferenceSession(str(out)).run(None, {"x": _x()}), 3)
    # Left: written, exit 5, the Loop and the reason on one line.
    onnx.save(_loop_model(4, "c2 = Less(k2, limit)", loop_condition="run"), src)
    out.unlink()
    assert main(["inline", str(src), "-o", str(out), "--unroll-loops"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spatialdrop-onnx: error: ")
    assert "1 Loop(s) were left: final: its condition ends it" in err[-1]
    assert out.exists() and "Loop" in _ops(onnx.load(out))
    # Without the option nothing is written out and a Loop is no failure.
    out.unlink()
    assert main(["inline", str(src), "-o", str(out), "-q"]) == 0
    assert sd.inline(onnx.load(src)).report.loops_unrolled == ()


#: In a child: a Loop of a 1,000-node body x 150 steps (about 380 MB to write out), the
#: address space capped 150 MB above what the process uses.
_UNDER_A_LIMIT = """
import re, resource, sys
from onnx import TensorProto
from onnx import helper as oh
from spatialdrop_onnx.errors import OutOfMemory
from spatialdrop_onnx.passes.loop_unrolling import unroll_loops
nodes, previous = [], "s"
for j in range(1000):
    nodes.append(oh.make_node("Add", [previous, "w"], [f"v{j}"], name=f"add{j}"))
    previous = f"v{j}"
nodes += [oh.make_node("Identity", [previous], ["s2"]), oh.make_node("Identity", ["c"], ["c2"])]
info = oh.make_tensor_value_info
body = oh.make_graph(nodes, "b", [info("i", TensorProto.INT64, []), info("c", TensorProto.BOOL, []),
                                  info("s", TensorProto.FLOAT, [3])],
                     [info("c2", TensorProto.BOOL, []), info("s2", TensorProto.FLOAT, [3])])
graph = oh.make_graph([oh.make_node("Loop", ["M", "", "x"], ["y"], body=body, name="L")], "g",
                      [info("x", TensorProto.FLOAT, [3])], [info("y", TensorProto.FLOAT, [3])],
                      [oh.make_tensor("M", TensorProto.INT64, [], [150]),
                       oh.make_tensor("w", TensorProto.FLOAT, [3], [1, 2, 3])])
model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (150 << 20), resource.RLIM_INFINITY))
nodes_before = len(model.graph.node)
try:
    unroll_loops(model)
except OutOfMemory as err:
    print(err, len(model.graph.node) == nodes_before)
    sys.exit(6)
"""


def test_writing_out_more_than_memory_allows_is_refused_before_it_starts():
    done = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 6, done.stderr[-500:]
    assert done.stdout.startswith("not enough memory for unroll loops: it needs about ")
    assert done.stdout.strip().endswith("True")  # the model was not touched
