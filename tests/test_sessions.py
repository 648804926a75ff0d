"""inference_session: element-wise ONNX Dropout trains when training_mode is true."""

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto
from onnx import helper as oh
from op_models import ort_session

from spatialdrop_onnx.sessions import inference_session


def _interior_dropout_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Relu", ["x"], ["a"]),
             oh.make_node("Dropout", ["a", "ratio", "training_mode"], ["b"]),
             oh.make_node("Relu", ["b"], ["y"])]
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4000]),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4000])],
        [onnx.numpy_helper.from_array(np.array(0.5, np.float32), "ratio")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def test_plain_onnxruntime_deletes_training_dropout():
    """The onnxruntime behaviour this module exists for; if it changes, so can the docs."""
    out = ort_session(_interior_dropout_model()).run(
        None, {"x": np.ones(4000, np.float32), "training_mode": np.array(True)})[0]
    assert (out == 1).all()


@pytest.mark.parametrize("native", [True, False])
def test_inference_session_keeps_training_dropout(native, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_interior_dropout_model(), path)
    for source in (_interior_dropout_model(), path):
        session = inference_session(source, native=native)
        x = np.ones(4000, np.float32)
        trained = session.run(None, {"x": x, "training_mode": np.array(True)})[0]
        assert set(np.unique(trained)) == {0.0, 2.0}
        assert abs((trained == 0).mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
        np.testing.assert_array_equal(
            session.run(None, {"x": x, "training_mode": np.array(False)})[0], x)


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
