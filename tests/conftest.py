"""Session fixtures and test-environment set-up (helpers live in tests/optional.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from optional import require


@pytest.fixture(scope="session")
def keras() -> Any:
    """Keras with TensorFlow and tf2onnx, required in CI."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's first import
    require("tensorflow")
    require("tf2onnx")
    return require("keras")


# --- Test models at an IR version the installed onnxruntime loads ------------------------
#
# onnx.helper.make_model stamps onnx's newest IR version (14 for onnx 1.23), which only the
# newest onnxruntime releases load. The oldest-versions CI job (scripts/oldest_versions.sh)
# runs this suite against the oldest onnxruntime the package supports, so models the tests
# build get the newest IR version that runtime accepts (measured once, below). The package
# itself writes what the input had (or 10 where function overloads need it).


def _newest_ir_the_runtime_loads() -> int:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as oh

    graph = oh.make_graph([oh.make_node("Identity", ["x"], ["y"])], "probe",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    for version in range(onnx.IR_VERSION, 9, -1):
        model.ir_version = version
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - refused: try an older IR version
            continue
        return version
    return 10


def _stamp_loadable_ir() -> None:
    import functools

    import onnx.helper

    newest = _newest_ir_the_runtime_loads()
    if newest >= onnx.IR_VERSION:
        return
    original = onnx.helper.make_model

    @functools.wraps(original)
    def make_model(graph, **kwargs):  # noqa: ANN001, ANN202 - onnx's own signature
        kwargs.setdefault("ir_version", newest)
        return original(graph, **kwargs)

    onnx.helper.make_model = make_model


_stamp_loadable_ir()
