"""``passes.portable_loops`` on small hand-built Loop/Scan models: every runtime agrees.

The models have the constructs tf2onnx's Keras RNN loops have — a weight passed
through the loop unchanged, the input sequence read from the enclosing scope, the
state emitted as a rank-2 scan output — plus a scalar scan output, a nested loop
reading the main graph (the MC loop around a GRU loop), and a Scan. Each is
checked against numpy in onnxruntime, onnx.reference and OpenVINO reading the
model *file* (``read_model(path)``: the route that refused the raw form).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from runtimes import OPENVINO_CONFIG, openvino_core

import spatialdrop_onnx as sd
from spatialdrop_onnx.passes.portable_loops import make_loops_portable, portable_loops

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
T, N, C = 4, 3, 5
RNG = np.random.default_rng(7)
FEEDS = {"xs": RNG.standard_normal((T, N, C)).astype(np.float32),
         "h0": RNG.standard_normal((N, C)).astype(np.float32),
         "W": (RNG.standard_normal((C, C)) / C).astype(np.float32)}


def _expected() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final state, the stacked states [T, N, C] and their per-step sums [T]."""
    h, states = FEEDS["h0"], []
    for t in range(T):
        h = np.tanh(h @ FEEDS["W"] + FEEDS["xs"][t])
        states.append(h)
    stacked = np.stack(states)
    return h, stacked, stacked.sum(axis=(1, 2))


def _rnn_body(prefix: str) -> onnx.GraphProto:
    """body(i, cond, h, W) -> (cond, h', W, h', sum(h')): W passes through; xs read outside."""
    p = prefix
    nodes = [
        oh.make_node("Gather", ["xs", f"{p}i"], [f"{p}x_t"], axis=0),
        oh.make_node("MatMul", [f"{p}h_in", f"{p}W_in"], [f"{p}hw"]),
        oh.make_node("Add", [f"{p}hw", f"{p}x_t"], [f"{p}pre"]),
        oh.make_node("Tanh", [f"{p}pre"], [f"{p}h_out"]),
        oh.make_node("ReduceSum", [f"{p}h_out"], [f"{p}total"], keepdims=0),
        oh.make_node("Identity", [f"{p}cond_in"], [f"{p}cond_out"]),
    ]
    return oh.make_graph(
        nodes, f"{p}body",
        [oh.make_tensor_value_info(f"{p}i", I64, []),
         oh.make_tensor_value_info(f"{p}cond_in", B, []),
         oh.make_tensor_value_info(f"{p}h_in", F, [N, C]),
         oh.make_tensor_value_info(f"{p}W_in", F, [C, C])],
        [oh.make_tensor_value_info(f"{p}cond_out", B, []),
         oh.make_tensor_value_info(f"{p}h_out", F, [N, C]),
         oh.make_tensor_value_info(f"{p}W_in", F, [C, C]),
         oh.make_tensor_value_info(f"{p}h_out", F, [N, C]),
         oh.make_tensor_value_info(f"{p}total", F, [])])


def _constants(prefix: str = "") -> list[onnx.NodeProto]:
    return [oh.make_node("Constant", [], [f"{prefix}M"], value=oh.make_tensor("m", I64, [], [T])),
            oh.make_node("Constant", [], [f"{prefix}go"], value=oh.make_tensor("g", B, [], [True]))]


def _inputs() -> list[onnx.ValueInfoProto]:
    return [oh.make_tensor_value_info("xs", F, [T, N, C]),
            oh.make_tensor_value_info("h0", F, [N, C]),
            oh.make_tensor_value_info("W", F, [C, C])]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def rnn_model() -> onnx.ModelProto:
    """One Loop: W passed through (its final value a graph output), xs read from outside."""
    loop = oh.make_node("Loop", ["M", "go", "h0", "W"], ["h_final", "W_final", "hs", "sums"],
                        body=_rnn_body(""), name="rnn")
    graph = oh.make_graph(
        [*_constants(), loop], "rnn", _inputs(),
        [oh.make_tensor_value_info("h_final", F, [N, C]),
         oh.make_tensor_value_info("W_final", F, [C, C]),
         oh.make_tensor_value_info("hs", F, [T, N, C]),
         oh.make_tensor_value_info("sums", F, [T])])
    return _model(graph)


def nested_model() -> onnx.ModelProto:
    """An outer Loop (K=2 rounds, like the MC loop) whose body runs the RNN loop on W, xs, h0
    from the main graph and accumulates its final state."""
    inner = oh.make_node("Loop", ["in_M", "in_go", "h0", "W"],
                         ["in_h", "in_W", "in_hs", "in_sums"], body=_rnn_body("in_"), name="inner")
    outer_body = oh.make_graph(
        [*_constants("in_"), inner,
         oh.make_node("Add", ["acc_in", "in_h"], ["acc_out"]),
         oh.make_node("Identity", ["o_cond_in"], ["o_cond_out"])],
        "outer_body",
        [oh.make_tensor_value_info("o_i", I64, []), oh.make_tensor_value_info("o_cond_in", B, []),
         oh.make_tensor_value_info("acc_in", F, [N, C])],
        [oh.make_tensor_value_info("o_cond_out", B, []),
         oh.make_tensor_value_info("acc_out", F, [N, C]),
         oh.make_tensor_value_info("in_hs", F, [T, N, C])])
    graph = oh.make_graph(
        [oh.make_node("Constant", [], ["K"], value=oh.make_tensor("k", I64, [], [2])),
         oh.make_node("Constant", [], ["yes"], value=oh.make_tensor("y", B, [], [True])),
         oh.make_node("Constant", [], ["zeros"],
                      value=onnx.numpy_helper.from_array(np.zeros((N, C), np.float32))),
         oh.make_node("Loop", ["K", "yes", "zeros"], ["twice", "all_hs"], body=outer_body,
                      name="outer")],
        "nested", _inputs(),
        [oh.make_tensor_value_info("twice", F, [N, C]),
         oh.make_tensor_value_info("all_hs", F, [2, T, N, C])])
    return _model(graph)


def scan_model() -> onnx.ModelProto:
    """Scan over xs: state s += x_t @ W, W a pass-through state; y_t = s."""
    body = oh.make_graph(
        [oh.make_node("MatMul", ["x_t", "sW_in"], ["xw"]),
         oh.make_node("Add", ["s_in", "xw"], ["s_out"]),
         oh.make_node("Identity", ["s_out"], ["y_t"])],
        "scan_body",
        [oh.make_tensor_value_info("s_in", F, [N, C]),
         oh.make_tensor_value_info("sW_in", F, [C, C]),
         oh.make_tensor_value_info("x_t", F, [N, C])],
        [oh.make_tensor_value_info("s_out", F, [N, C]),
         oh.make_tensor_value_info("sW_in", F, [C, C]),
         oh.make_tensor_value_info("y_t", F, [N, C])])
    scan = oh.make_node("Scan", ["h0", "W", "xs"], ["s_final", "W_out", "ys"], body=body,
                        num_scan_inputs=1, name="scan")
    graph = oh.make_graph([scan], "scan", _inputs(),
                          [oh.make_tensor_value_info("s_final", F, [N, C]),
                           oh.make_tensor_value_info("ys", F, [T, N, C])])
    return _model(graph)


def _ort(model: onnx.ModelProto) -> list[np.ndarray]:
    return sd.inference_session(model).run(None, FEEDS)


def _openvino_file(model: onnx.ModelProto, path: Path) -> list[np.ndarray]:
    """OpenVINO reading the model from a file, as ``read_model(path)``/``ovc`` users do."""
    onnx.save(model, path)
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", OPENVINO_CONFIG)
    results = compiled.create_infer_request().infer(FEEDS)
    return [np.array(results[output]) for output in compiled.outputs]


def _reference(model: onnx.ModelProto) -> list[np.ndarray]:
    return list(ReferenceEvaluator(model).run(None, FEEDS))


def _assert_all_close(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


# --- What the raw form does in each runtime (why the pass exists) ---------------------


def test_openvino_refuses_a_pass_through_body_output_read_from_a_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="canonical inputs size"):
        _openvino_file(rnn_model(), tmp_path / "raw.onnx")


def test_reference_concatenates_rank_2_scan_outputs_and_pads_scalars() -> None:
    _, _, hs, sums = _reference(rnn_model())
    assert hs.shape == (T * N, C) and sums.shape == (T, 1)  # onnxruntime: (T, N, C) and (T,)


# --- After the pass ---------------------------------------------------------------------


def test_rnn_loop_runs_alike_everywhere(tmp_path: Path) -> None:
    h, hs, sums = _expected()
    expected = [h, FEEDS["W"], hs, sums]
    raw = rnn_model()
    _assert_all_close(_ort(raw), expected)
    model, report = portable_loops(raw)
    onnx.checker.check_model(model, full_check=True)
    assert (report.hoisted, report.stacked, report.left) == (1, 2, ())
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert list(loop.input[2:]) == ["h0"]  # W is no state any more: the body reads it
    body = loop.attribute[0].g
    body_inputs = {i.name for i in body.input}
    made = {o for n in body.node for o in n.output}
    assert all(o.name in made and o.name not in body_inputs for o in body.output)
    _assert_all_close(_ort(model), expected)
    _assert_all_close(_reference(model), expected)
    _assert_all_close(_openvino_file(model, tmp_path / "portable.onnx"), expected)


def test_nested_loops_run_alike_everywhere(tmp_path: Path) -> None:
    h, hs, _ = _expected()
    expected = [2 * h, np.stack([hs, hs])]
    raw = nested_model()
    _assert_all_close(_ort(raw), expected)
    model, report = portable_loops(raw)
    assert report.hoisted == 1 and report.stacked == 3  # inner hs and sums, outer all_hs
    _assert_all_close(_ort(model), expected)
    _assert_all_close(_reference(model), expected)
    _assert_all_close(_openvino_file(model, tmp_path / "nested.onnx"), expected)


def test_scan_pass_through_state_gets_its_own_node(tmp_path: Path) -> None:
    """OpenVINO's Scan refuses outer-scope reads as well as pass-through outputs: the state
    stays (no hoisting), its output becomes an Identity."""
    s, ys = FEEDS["h0"].copy(), []
    for t in range(T):
        s = s + FEEDS["xs"][t] @ FEEDS["W"]
        ys.append(s)
    expected = [s, np.stack(ys)]
    with pytest.raises(Exception, match="Number of Scan node inputs"):
        _openvino_file(scan_model(), tmp_path / "raw.onnx")
    model, report = portable_loops(scan_model())
    assert (report.hoisted, report.identities, report.stacked) == (0, 1, 0)
    scan = model.graph.node[0]
    assert list(scan.input) == ["h0", "W", "xs"]
    _assert_all_close(_ort(model), expected)
    _assert_all_close(_reference(model), expected)
    _assert_all_close(_openvino_file(model, tmp_path / "scan.onnx"), expected)


def test_the_pass_is_idempotent() -> None:
    model = rnn_model()
    first = make_loops_portable(model)
    once = model.SerializeToString()
    second = make_loops_portable(model)
    assert first.modified and not second.modified
    assert model.SerializeToString() == once


def test_a_model_without_loops_is_left_alone() -> None:
    graph = oh.make_graph([oh.make_node("Identity", ["xs"], ["y"])], "plain", _inputs()[:1],
                          [oh.make_tensor_value_info("y", F, [T, N, C])])
    model = _model(graph)
    before = model.SerializeToString()
    assert not make_loops_portable(model).modified
    assert model.SerializeToString() == before
