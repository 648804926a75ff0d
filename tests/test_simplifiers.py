"""What a graph simplifier does to a rewritten model (real-models note 9, 10).

onnxslim (like onnxsim, and onnxruntime's own load-warning advice) drops a graph
input that has an initializer and freezes the initializer's value. The rewrite's
``training_mode`` default is therefore false: a simplified model must be the
inference model, equal to eval. With a true default the freeze would leave
dropout on for every run — the test shows why the default matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from optional import require

import spatialdrop_onnx as sd

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "onnx"
SOURCE = SHIPPED / "torch_dropout2d_dynamic.onnx"


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = [d.dim_value or 4 for d in graph_input.type.tensor_type.shape.dim]
        feeds[graph_input.name] = (rng.random(dims) + 0.5).astype(np.float32)
    return feeds


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], times: int) -> list[np.ndarray]:
    session = sd.inference_session(model)  # one session: its random stream moves on per run
    return [session.run(None, feeds)[0] for _ in range(times)]


def test_onnxslim_on_a_rewritten_model_gives_the_inference_model() -> None:
    onnxslim = require("onnxslim")
    rewritten = sd.rewrite(SOURCE).model
    feeds = _feeds(rewritten)
    inference = _runs(sd.strip(rewritten).model, feeds, 1)[0]

    slimmed = onnxslim.slim(rewritten)
    # The simplifier froze the switch at its default (false) and removed the input...
    assert "training_mode" not in [i.name for i in slimmed.graph.input]
    outputs = _runs(slimmed, feeds, 4)
    # ...so every run is the inference output, exactly.
    for output in outputs:
        np.testing.assert_array_equal(output, inference)


def test_a_true_default_would_be_frozen_on() -> None:
    onnxslim = require("onnxslim")
    rewritten = sd.rewrite(SOURCE, training_default=True).model
    feeds = _feeds(rewritten)
    inference = _runs(sd.strip(rewritten).model, feeds, 1)[0]
    slimmed = onnxslim.slim(rewritten)
    assert "training_mode" not in [i.name for i in slimmed.graph.input]
    outputs = _runs(slimmed, feeds, 4)
    # Dropout is now on for good: runs differ from the inference output and from each other.
    assert not any(np.array_equal(output, inference) for output in outputs)
    assert len({output.tobytes() for output in outputs}) > 1


def test_strip_then_onnxslim_keeps_eval_outputs() -> None:
    onnxslim = require("onnxslim")
    raw = onnx.load(SOURCE)
    stripped = sd.strip(raw).model
    feeds = _feeds(stripped)
    expected = _runs(stripped, feeds, 1)[0]
    slimmed = onnxslim.slim(stripped)
    assert not {"RandomUniformLike", "RandomUniform"} & {n.op_type for n in slimmed.graph.node}
    np.testing.assert_allclose(_runs(slimmed, feeds, 1)[0], expected, rtol=1e-6, atol=1e-6)
