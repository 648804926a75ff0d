"""The ``floor_mask`` rule family: stochastic depth as ``x / keep * floor(keep + uniform)``.

Positive cases on real exports (Keras ``keras.applications`` ``StochasticDepth``
through the converter's tf2onnx path; PyTorch drop_connect written the old
model-zoo way through the dynamo exporter), every form and operand order in
the ONNX text syntax, and near misses that must stay unconverted with the
reason the rule gives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction
from optional import require
from passes_helpers import (
    assert_no_dropout,
    assert_same,
    check_noise_slices,
    count,
    flag,
    full_check,
    parse,
    run,
    sample,
    session,
)

import spatialdrop_onnx as sd

X = sample((2, 4, 3, 5))
HEADER = '<ir_version: 8, opset_import: ["": 18]>'
#: keep = 0.8 (ratio 0.2) and its reciprocal, as a float32 exporter writes them.
CONSTS = "<float k = {0.8}, float s = {1.25}, float two = {2.0}, float half = {0.5}>"


def model(body: str, inputs: str = "float[2,4,3,5] x") -> onnx.ModelProto:
    return parse(f"""{HEADER}
        g ({inputs}) => (float[2,4,3,5] y) {CONSTS} {{
            {body}
        }}""")


def _check_training(rewritten: onnx.ModelProto, data: np.ndarray, ratio: float,
                    axes: list[int], runs: int = 40) -> None:
    """Training off: the identity. On: whole noise slices kept (scaled) or dropped."""
    feeds = {"x": data}
    assert_same(run(rewritten, {**feeds, "training_mode": flag(False)}), [data])
    training = session(rewritten)  # one session: each run draws a fresh mask
    keeps = [check_noise_slices(data, run(training, {**feeds, "training_mode": flag(True)})[0],
                                ratio, axes) for _ in range(runs)]
    assert_drop_fraction(np.stack(keeps), ratio)


# --- Every form, in ONNX text -------------------------------------------------------------

# (name, body); every case is keep 0.8 with one decision per sample (shared axes 1, 2, 3).
FORMS = [
    ("scaled_data_mul", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)"""),
    ("scaled_data_div_noise_first", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(u, k)
        m = Floor(a)
        xs = Div(x, k)
        y = Mul(m, xs)"""),
    ("scale_after_mul", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xm = Mul(x, m)
        y = Mul(xm, s)"""),
    ("scale_after_div", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xm = Mul(m, x)
        y = Div(xm, k)"""),
    ("scaled_mask_mul", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        ms = Mul(s, m)
        y = Mul(x, ms)"""),
    ("scaled_mask_div", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        md = Div(m, k)
        y = Mul(md, x)"""),
    ("uniform_like_affine_identity", """
        shape = Constant<value = int64[4] {2, 1, 1, 1}>()
        z = ConstantOfShape(shape)
        r = RandomUniformLike<low = -1.0, high = 1.0>(z)
        r1 = Add(r, two)
        u = Mul(r1, half)
        u0 = Sub(u, half)
        a = Add(k, u0)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)"""),
]


@pytest.mark.parametrize("name,body", FORMS, ids=[f[0] for f in FORMS])
def test_floor_mask_forms(name: str, body: str) -> None:
    source = model(body)
    (site,) = sd.inspect(source)
    assert site.kind == "random-subgraph" and site.rule.startswith("floor_mask")
    assert site.ratio == pytest.approx(0.2, rel=1e-6)
    assert list(site.shared_axes) == [1, 2, 3]
    rewritten, report = sd.rewrite(source)
    full_check(rewritten)
    assert [s.becomes for s in report.converted] == [sd.OP_TYPE]
    assert count(rewritten, "Floor") == 0
    assert count(rewritten, "RandomUniform") + count(rewritten, "RandomUniformLike") == 0
    _check_training(rewritten, X, 0.2, [1, 2, 3])
    stripped = sd.strip(source).model
    assert_no_dropout(stripped)
    assert_same(run(stripped, {"x": X}), [X])


def test_floor_mask_on_channels() -> None:
    """The rule reads the noise shape like any other: (N, C, 1, 1) keeps whole channels."""
    source = model("""
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)""")
    (site,) = sd.inspect(source)
    assert list(site.shared_axes) == [2, 3]
    _check_training(sd.rewrite(source).model, X, 0.2, [2, 3])


# --- Near misses: unconverted, with the reason ---------------------------------------------

# (name, body, fragment of the reason inspect reports, or None: no random op, no site)
NEAR_MISSES = [
    ("rounding_not_dropout", """
        h = Add(half, x)
        m = Floor(h)
        y = Mul(x, m)""", None),
    ("keep_not_constant", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        kk = ReduceMean<keepdims = 0>(x)
        a = Add(kk, u)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)""", "not a constant scalar"),
    ("scale_is_not_one_over_keep", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xs = Mul(x, two)
        y = Mul(xs, m)""", "scaled by 2, not 1/(1-ratio) = 1.2"),
    ("noise_not_on_0_1", """
        u = RandomUniform<shape = [2, 1, 1, 1], low = -1.0, high = 1.0>()
        a = Add(k, u)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)""", "uniform on [-1, 1), not [0, 1)"),
    ("keep_above_one", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(two, u)
        m = Floor(a)
        xs = Mul(x, half)
        y = Mul(xs, m)""", "drop probability -1 is outside [0, 1)"),
    ("mask_grows_the_data", """
        u = RandomUniform<shape = [2, 1, 3, 1]>()
        a = Add(k, u)
        m = Floor(a)
        xs = Mul(x, s)
        y = Mul(xs, m)""", "noise dim 2 is 3, neither 1 nor the data dim 1"),
    ("ceil_is_not_floor", """
        u = RandomUniform<shape = [2, 1, 1, 1]>()
        a = Add(k, u)
        m = Ceil(a)
        xs = Mul(x, s)
        y = Mul(xs, m)""", "no rule matches"),
]


@pytest.mark.parametrize("name,body,reason", NEAR_MISSES, ids=[n[0] for n in NEAR_MISSES])
def test_floor_mask_near_misses(name: str, body: str, reason: str | None) -> None:
    source = model(body, "float[2,4,1,5] x" if name == "mask_grows_the_data" else
                   "float[2,4,3,5] x")
    sites = sd.inspect(source)
    rewritten, report = sd.rewrite(source)
    assert not report.converted
    if reason is None:
        assert sites == [] and not report.unconvertible
        assert rewritten.graph == source.graph  # untouched
        return
    (site,) = sites
    assert site.kind == "unconvertible" and reason in site.reason, site.reason
    assert [s.reason for s in report.unconvertible] == [site.reason]


# --- Real exports ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keras_stochastic_depth(keras: Any) -> dict[str, Any]:
    """keras.applications' own StochasticDepth after a Dense (NHWC) and a Conv2D (NCHW in ONNX).

    Exported through the converter's trace and tf2onnx path with the two layers
    forced to training mode; each layer's input is a model output too.
    """
    from keras.src.applications.convnext import StochasticDepth

    from spatialdrop_onnx.converters.keras_export import export_traced
    from spatialdrop_onnx.converters.keras_stack import import_keras_stack
    from spatialdrop_onnx.converters.keras_trace import trace_keras

    keras.utils.set_random_seed(21)
    layers = keras.layers
    image = keras.Input((6, 6, 3), name="image")
    dense = layers.Dense(5, name="dense")(image)
    conv = layers.Conv2D(4, 3, padding="same", name="conv")(image)
    after_dense = StochasticDepth(0.25, name="depth_dense")(dense)
    after_conv = StochasticDepth(0.4, name="depth_conv")(conv)
    net = keras.Model(image, [dense, after_dense, conv, after_conv])
    stack = import_keras_stack()
    traced = trace_keras(net, stack, [net.get_layer("depth_dense"), net.get_layer("depth_conv")])
    raw = export_traced(traced, stack).model
    data = np.random.default_rng(2).standard_normal((64, 6, 6, 3)).astype(np.float32)
    return {"raw": raw, "data": data, "keras": net,
            "names": [o.name for o in raw.graph.output]}


def test_keras_stochastic_depth_export(keras_stochastic_depth: dict[str, Any]) -> None:
    raw = keras_stochastic_depth["raw"]
    assert count(raw, "Floor") == 2 and count(raw, "StatelessRandomUniformV2") == 2
    sites = sd.inspect(raw)
    assert sorted(round(s.ratio, 6) for s in sites) == [0.25, 0.4]
    assert all(s.rule.startswith("floor_mask") and list(s.shared_axes) == [1, 2, 3]
               for s in sites)
    rewritten, report = sd.rewrite(raw)
    full_check(rewritten)
    assert not report.unconvertible and count(rewritten, "StatelessRandomUniformV2") == 0
    data = keras_stochastic_depth["data"]
    names = keras_stochastic_depth["names"]
    expected = keras_stochastic_depth["keras"].predict(data, verbose=0)
    off = dict(zip(names, run(rewritten, {"image": data, "training_mode": flag(False)}),
                   strict=True))
    for name, want in zip(names, expected, strict=True):
        np.testing.assert_allclose(off[name], want, rtol=1e-5, atol=1e-5)
    training = session(rewritten)
    on = dict(zip(names, run(training, {"image": data, "training_mode": flag(True)}),
                  strict=True))
    for source, dropped, ratio in ((names[0], names[1], 0.25), (names[2], names[3], 0.4)):
        keep = check_noise_slices(on[source], on[dropped], ratio, [1, 2, 3])
        assert_drop_fraction(keep, ratio)


@pytest.fixture(scope="session")
def torch_drop_connect(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two model-zoo stochastic-depth functions through the dynamo exporter (dynamic batch)."""
    torch = require("torch")
    nn = torch.nn

    def drop_connect(x: Any, p: float) -> Any:
        """EfficientNet-PyTorch's: divide first, then multiply by the floored mask."""
        keep = 1.0 - p
        random = keep + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device)
        return x.div(keep) * random.floor()

    def drop_path(x: Any, p: float) -> Any:
        """Old timm: mask first, divide after."""
        keep = 1.0 - p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype)).floor_()
        return x * mask / keep

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: Any) -> tuple[Any, ...]:
            y = self.conv(x)
            return y, drop_connect(y, 0.3), drop_path(y, 0.15)

    import contextlib
    import io
    import warnings

    torch.manual_seed(0)
    module = Blocks().train()
    example = torch.rand(2, 3, 5, 5)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                    training=torch.onnx.TrainingMode.TRAINING,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return {"raw": program.model_proto, "module": module}


def test_torch_drop_connect_export(torch_drop_connect: dict[str, Any]) -> None:
    raw = torch_drop_connect["raw"]
    sites = sorted(sd.inspect(raw), key=lambda s: s.ratio)
    assert [round(s.ratio, 6) for s in sites] == [0.15, 0.3]
    assert {s.rule for s in sites} == {"floor_mask_scale_after_div", "floor_mask_scaled_data"}
    assert all(list(s.shared_axes) == [1, 2, 3] for s in sites)
    rewritten, report = sd.rewrite(raw)
    full_check(rewritten)
    assert not report.unconvertible and count(rewritten, "Floor") == 0
    data = (np.random.default_rng(3).random((64, 3, 5, 5)) + 1.0).astype(np.float32)
    name = rewritten.graph.input[0].name
    conv, connect, path = run(rewritten, {name: data, "training_mode": flag(False)})
    np.testing.assert_array_equal(connect, conv)
    np.testing.assert_array_equal(path, conv)
    conv, connect, path = run(session(rewritten), {name: data, "training_mode": flag(True)})
    for dropped, ratio in ((connect, 0.3), (path, 0.15)):
        assert_drop_fraction(check_noise_slices(conv, dropped, ratio, [1, 2, 3]), ratio)
    assert math.isclose(sites[0].ratio, 0.15, rel_tol=1e-6)
