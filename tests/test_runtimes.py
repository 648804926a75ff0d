"""The README's runtime table on one small real model (docs/runtimes.md names every test).

The CNN of ``spatialdrop-onnx bench --mc`` (conv -> SpatialDropout2D -> conv -> head)
in each runtime: training mode keeps whole channels and the rate, inference equals
onnxruntime's output with the native kernel, the stripped model computes the same
everywhere and has nothing left to sample.
"""

from __future__ import annotations

import numpy as np
import pytest
from runtimes import RUNTIMES, runner

import spatialdrop_onnx as sd
from spatialdrop_onnx.bench_mc import cnn_feeds, cnn_model
from spatialdrop_onnx.errors import UserError
from spatialdrop_onnx.graph import RANDOM_OPS, iter_nodes

RATIO = 0.25


@pytest.fixture(scope="module")
def cnn():
    model = cnn_model(ratio=RATIO)
    x = cnn_feeds(16)["x"]
    expected = sd.inference_session(model).run(None, {"x": x,
                                                      "training_mode": np.array(False)})[0]
    return model, x, expected


@pytest.mark.parametrize("kind", RUNTIMES)
def test_inference(kind, cnn):
    model, x, expected = cnn
    got = runner(kind, model)({"x": x, "training_mode": np.array(False)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_training(kind, cnn):
    """The dropout is the CNN's only randomness: a run differs from inference, and with the
    ratio at 1 every channel is dropped (the head then sees zeros: uniform probabilities)."""
    model, x, expected = cnn
    run = runner(kind, model)
    first, second = (run({"x": x, "training_mode": np.array(True)})[0] for _ in range(2))
    assert not np.array_equal(first, second) and not np.allclose(first, expected)
    np.testing.assert_allclose(first.sum(-1), 1, rtol=1e-5)
    all_dropped = runner(kind, cnn_model(ratio=1.0))
    probs = all_dropped({"x": x, "training_mode": np.array(True)})[0]
    np.testing.assert_allclose(probs, 0.1, rtol=1e-5)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_stripped_model_everywhere(kind, cnn):
    model, x, expected = cnn
    stripped = sd.strip(model).model
    assert [i.name for i in stripped.graph.input] == ["x"]
    assert not any(n.domain == sd.DOMAIN or n.op_type in ("Dropout", *RANDOM_OPS)
                   for _, n in iter_nodes(stripped, include_ours=True))
    np.testing.assert_allclose(runner(kind, stripped)({"x": x})[0], expected,
                               rtol=1e-5, atol=1e-6)
    if kind == "ort_native":
        with pytest.raises(UserError, match="every sample would be the same"):
            sd.monte_carlo(stripped, samples=4)
