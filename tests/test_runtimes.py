"""The README's runtime table on one small real model (docs/runtimes.md names every test).

The CNN of ``spatialdrop-onnx bench --mc`` (conv -> SpatialDropout2D -> conv -> head)
in each runtime: training mode keeps whole channels and the rate, inference equals
onnxruntime's output with the native kernel, the Monte-Carlo model samples (tract: the
batch strategy; it has no ``Loop``), the stripped model computes the same everywhere and
has nothing left to sample.
"""

from __future__ import annotations

import math

import numpy as np
import onnx.parser
import pytest
from dropout_checks import sample_data
from optional import require
from runtimes import TABLE_RUNTIMES, load_tract, runner

import spatialdrop_onnx as sd
from spatialdrop_onnx.bench_mc import cnn_feeds, cnn_model
from spatialdrop_onnx.errors import UserError
from spatialdrop_onnx.graph import RANDOM_OPS, iter_nodes

RATIO = 0.25
SAMPLES = 16
CHANNEL = """<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>
    g (float[B,64,3,3] x, bool training_mode) => (float[B,64,3,3] y)
      <float r = {0.5}, bool training_mode = {0}> {
        y = org.spatialdrop.SpatialDropout(x, r, training_mode)
    }"""


@pytest.fixture(scope="module")
def cnn():
    model = cnn_model(ratio=RATIO)
    x = cnn_feeds(16)["x"]
    expected = sd.inference_session(model).run(None, {"x": x,
                                                      "training_mode": np.array(False)})[0]
    return model, x, expected


@pytest.mark.parametrize("kind", TABLE_RUNTIMES)
def test_inference(kind, cnn):
    model, x, expected = cnn
    got = runner(kind, model)({"x": x, "training_mode": np.array(False)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", TABLE_RUNTIMES)
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


@pytest.mark.parametrize("kind", TABLE_RUNTIMES)
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


@pytest.fixture(scope="module")
def channel():
    """One SpatialDropout(0.5) on (4, 64, 3, 3): its MC statistics are exact functions of
    each channel's keep count."""
    model = onnx.parser.parse_model(CHANNEL)
    return {strategy: sd.monte_carlo(model, samples=SAMPLES, strategy=strategy).model
            for strategy in ("batch", "loop")}


@pytest.mark.parametrize("kind", TABLE_RUNTIMES)
@pytest.mark.parametrize("strategy", ["batch", "loop"])
def test_monte_carlo_model(strategy, kind, cnn, channel):
    """The MC model in one call: per channel, mean = x * 2k/N and std = x * 2 sqrt(p(1-p))
    with k kept of N, p = k/N, k binomial; the CNN's MC mean is a distribution. tract has
    no Loop: the loop strategy is refused when the model loads, naming the Loop."""
    model = channel[strategy]
    if kind == "tract" and strategy == "loop":
        tract = require("tract")
        with pytest.raises(tract.TractError, match=r"Unimplemented\(Loop\)"):
            load_tract(sd.inline(model).model)
        return
    x = sample_data((4, 64, 3, 3), np.dtype(np.float32))
    mean, std = runner(kind, model)({"x": x})
    ratio = (mean / x).astype(np.float64)
    kept = np.rint(ratio * SAMPLES / 2)
    np.testing.assert_allclose(ratio, 2 * kept / SAMPLES, atol=1e-5)
    per_channel = kept[..., :1, :1]
    assert (kept == per_channel).all(), "a channel's positions saw different decisions"
    p = per_channel / SAMPLES
    np.testing.assert_allclose(std / x, np.broadcast_to(2 * np.sqrt(p * (1 - p)), x.shape),
                               rtol=1e-5, atol=1e-6)
    assert abs(float(p.mean()) - 0.5) <= 4 * math.sqrt(0.25 / (SAMPLES * p.size)), p.mean()
    assert ((p > 0) & (p < 1)).mean() > 0.9, "the samples share their masks"
    cnn_model_, cnn_x, _ = cnn
    mc_cnn = sd.monte_carlo(cnn_model_, samples=SAMPLES, strategy=strategy).model
    probs_mean, probs_std = runner(kind, mc_cnn)({"x": cnn_x})
    np.testing.assert_allclose(probs_mean.sum(-1), 1, rtol=1e-5)
    assert (probs_std > 0).mean() > 0.9
