"""Run one model in each runtime of the README's table: one runner per row.

``runner(kind, model)`` prepares the model as that runtime needs it and returns
a function ``feeds -> list of outputs`` (graph output order); every call is one
more run in the same session / compiled model, so draws change from call to call.

* ``ort_native``: onnxruntime with the native kernel (``inference_session``);
* ``ort_body``: plain ``onnxruntime.InferenceSession`` on the portable model,
  no library, default optimisers;
* ``reference``: ``onnx.reference.ReferenceEvaluator`` on the portable model;
* ``openvino``: ``inline(model)`` read with ``openvino.Core().read_model`` and
  compiled for the CPU plugin with ``INFERENCE_PRECISION_HINT=f32`` (openvino is
  required in CI);
* ``tract``: ``inline(model)`` loaded by tract's ONNX front end
  (``tract.onnx().load(path).into_model().into_runnable()``), every call one run of
  one state (tract is required in CI).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from optional import require

import spatialdrop_onnx as sd

#: The runtimes that run every model of the table, Loop included.
RUNTIMES = ("ort_native", "ort_body", "reference", "openvino")
#: The README's runtime table: the above and tract (no Loop: MC batch strategy only).
TABLE_RUNTIMES = (*RUNTIMES, "tract")
Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def openvino_core():  # noqa: ANN201 - openvino.Core
    """An OpenVINO Core (fails in CI, skips elsewhere, without openvino)."""
    return require("openvino").Core()


#: OpenVINO's CPU plugin computes convolutions and matrix products in bfloat16 on CPUs that
#: have it, unless asked for float: the tests compare with float results.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def compile_openvino(model: onnx.ModelProto) -> Run:
    """``model`` as it is (no inlining) on OpenVINO's CPU plugin, in float precision."""
    core = openvino_core()
    compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU",
                                  OPENVINO_CONFIG)
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = request.infer(feeds)
        return [np.array(results[output]) for output in compiled.outputs]

    return run


def load_tract(model: onnx.ModelProto, facts: dict[int, str] | None = None):  # noqa: ANN201
    """``model`` as it is (no inlining) in tract, optimised and runnable (a tract.Runnable).

    tract's Python API loads ONNX from a path only. ``facts``: input index -> tract fact
    (``"24,6,i32"``), for models whose shapes tract cannot follow from a symbolic batch.
    Raises ``tract.TractError`` when tract refuses the model.
    """
    tract = require("tract")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx.save(model, path)
        loaded = tract.onnx().load(str(path))
        for index, fact in (facts or {}).items():
            loaded.set_input_fact(index, fact)
        return loaded.into_model().into_runnable()


def compile_tract(model: onnx.ModelProto, facts: dict[int, str] | None = None) -> Run:
    """``model`` as it is in tract; the calls are runs of one state, as the runs of one
    onnxruntime session are. Inputs are fed in graph order (tract takes a list)."""
    state = load_tract(model, facts).spawn_state()
    names = [i.name for i in model.graph.input
             if i.name not in {t.name for t in model.graph.initializer}]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [t.to_numpy() for t in state.run([np.asarray(feeds[n]) for n in names])]

    return run


def runner(kind: str, model: onnx.ModelProto) -> Run:
    """A function running ``model`` in runtime ``kind`` (see the module docstring)."""
    if kind == "ort_native":
        session = sd.inference_session(model, native=True)
        return lambda feeds: session.run(None, feeds)
    if kind == "ort_body":
        portable = sd.make_portable(model)
        session = ort.InferenceSession(portable.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if kind == "reference":
        evaluator = ReferenceEvaluator(sd.make_portable(model))
        return lambda feeds: evaluator.run(None, feeds)
    if kind == "openvino":
        return compile_openvino(sd.inline(model).model)
    if kind == "tract":
        return compile_tract(sd.inline(model).model)
    raise ValueError(kind)
