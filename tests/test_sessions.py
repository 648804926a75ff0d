"""inference_session: element-wise ONNX Dropout trains when training_mode is true, and each run
draws a mask independent of the last."""

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from dropout_checks import assert_drop_fraction
from onnx import TensorProto
from onnx import helper as oh
from op_models import ort_session

from spatialdrop_onnx.sessions import inference_session


def _interior_dropout_model(size: int = 4000, ratio: float = 0.5,
                            opset: int = 17) -> onnx.ModelProto:
    nodes = [oh.make_node("Relu", ["x"], ["a"]),
             oh.make_node("Dropout", ["a", "ratio", "training_mode"], ["b"]),
             oh.make_node("Relu", ["b"], ["y"])]
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [size]),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        [onnx.numpy_helper.from_array(np.array(ratio, np.float32), "ratio")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _dropped_per_run(session, size: int, runs: int) -> np.ndarray:  # noqa: ANN001
    """[runs, size]: which elements each training run dropped."""
    x = np.ones(size, np.float32)
    return np.stack([session.run(None, {"x": x, "training_mode": np.array(True)})[0] == 0
                     for _ in range(runs)])


def test_plain_onnxruntime_deletes_training_dropout():
    """The onnxruntime behaviour this module exists for; if it changes, so can the docs."""
    out = ort_session(_interior_dropout_model()).run(
        None, {"x": np.ones(4000, np.float32), "training_mode": np.array(True)})[0]
    assert (out == 1).all()


def test_plain_onnxruntime_dropout_masks_follow_each_other():
    """The other behaviour this module exists for. onnxruntime's CPU Dropout seeds a fresh
    minstd_rand0 with the process seed plus one per call: element 0's uniform moves by
    16807/(2^31-1) = 7.8e-6 from run to run, so over 60 runs it is kept in all or dropped in
    all (a change of decision has probability ~1e-3 per session; asked of 2 sessions in 3)."""
    model = _interior_dropout_model(240, 0.3)
    frozen = 0
    for _ in range(3):
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=["EliminateDropout"])
        first = _dropped_per_run(session, 240, 60)[:, 0]
        frozen += bool(first.all() or not first.any())
    assert frozen >= 2


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("as_path", [False, True], ids=["proto", "path"])
def test_inference_session_draws_independent_masks(native, as_path, tmp_path):
    """Every element decides afresh each run: none keeps one decision over 150 runs (for
    independent draws at p=0.3 the chance is 2e-23 per element), the spread of the
    per-element rates is binomial (plain onnxruntime: 1.5x, elements frozen) and the rate is p."""
    model = _interior_dropout_model(240, 0.3)
    if as_path:
        onnx.save(model, tmp_path / "m.onnx")
        model = tmp_path / "m.onnx"
    dropped = _dropped_per_run(inference_session(model, native=native), 240, 150)
    rates = dropped.mean(axis=0)
    assert not ((rates == 0) | (rates == 1)).any(), np.flatnonzero((rates == 0) | (rates == 1))
    assert rates.std() < 1.25 * np.sqrt(0.3 * 0.7 / 150), rates.std()
    assert_drop_fraction(~dropped, 0.3)


def test_inference_session_finds_external_data_beside_the_file(tmp_path, monkeypatch):
    """The model reaches onnxruntime as bytes when its Dropout is rewritten: external data is
    still read from the file's folder, not the working directory."""
    model = _interior_dropout_model(4000, 0.5)
    weights = np.arange(1, 4001, dtype=np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weights, "w"))
    model.graph.node[0].CopyFrom(oh.make_node("Mul", ["x", "w"], ["a"]))
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    session = inference_session(tmp_path / "m.onnx")
    x = np.ones(4000, np.float32)
    trained = session.run(None, {"x": x, "training_mode": np.array(True)})[0]
    kept = trained != 0
    np.testing.assert_allclose(trained[kept], weights[kept] * 2, rtol=1e-6)
    assert_drop_fraction(kept, 0.5)
    np.testing.assert_array_equal(
        session.run(None, {"x": x, "training_mode": np.array(False)})[0], weights)


@pytest.mark.parametrize(("native", "opset"), [(True, 13), (True, 17), (False, 17)])
def test_inference_session_keeps_training_dropout(native, opset, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_interior_dropout_model(opset=opset), path)
    for source in (_interior_dropout_model(opset=opset), path):
        session = inference_session(source, native=native)
        x = np.ones(4000, np.float32)
        trained = session.run(None, {"x": x, "training_mode": np.array(True)})[0]
        assert set(np.unique(trained)) == {0.0, 2.0}
        assert abs((trained == 0).mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
        np.testing.assert_array_equal(
            session.run(None, {"x": x, "training_mode": np.array(False)})[0], x)


def test_below_the_bodies_opset_without_the_kernel_keeps_onnxruntime_dropout_and_says_so():
    """No function body below opset 15: the session still trains (onnxruntime's Dropout, not
    optimised away) and a RuntimeWarning says its masks are not independent."""
    with pytest.warns(RuntimeWarning, match="not independent"):
        session = inference_session(_interior_dropout_model(opset=13), native=False)
    x = np.ones(4000, np.float32)
    trained = session.run(None, {"x": x, "training_mode": np.array(True)})[0]
    assert set(np.unique(trained)) == {0.0, 2.0}


def test_no_training_mode_initializer_warning(tmp_path):
    """onnxruntime warns on every model whose graph input has an initializer default; the
    warning's advice would freeze the switch, so inference_session keeps it off the terminal."""
    import subprocess
    import sys

    model = _interior_dropout_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(False),
                                                                "training_mode"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    plain = "import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1])"
    ours = "import spatialdrop_onnx as sd, sys; sd.inference_session(sys.argv[1])"
    stderr = {}
    for label, code in (("plain", plain), ("ours", ours)):
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, timeout=120, check=True)
        stderr[label] = done.stderr
    assert "training_mode" in stderr["plain"]  # the warning exists...
    assert stderr["ours"] == ""                 # ...and inference_session does not show it
