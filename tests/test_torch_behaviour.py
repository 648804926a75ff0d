"""spatialdrop_onnx.torch: dropout found by behaviour, attention dropout, and a quiet export.

Zoo-style modules (``tests/torch_zoo.py``) written as Hugging Face, timm, EfficientNet and
torch's own ``nn.MultiheadAttention`` write them, each exported once per exporter and shared:

- ``Probes``: every way of calling SDPA (plain, ``is_causal``, boolean and float masks,
  ``scale``, ``enable_gqa``), ``nn.MultiheadAttention`` both ways, a ``ConvNextDropPath`` and
  an inline drop-connect, each on an output of its own (with the identity as ``value`` an
  attention output *is* the attention probabilities), so each mask is visible;
- ``AttentionNet`` and ``DropPathNet``: small real networks for the report and for
  ``training_mode`` false against ``module.eval()``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction
from optional import require
from torch_checks import assert_varies_along_unshared_axes, keeps

import spatialdrop_onnx as sd

EXPORTERS = ["dynamo", "torchscript"]
RUNS = 150  # stochastic passes per model, for the rate checks
BATCH, HEADS, LENGTH, SOURCE, EMBED = 4, 2, 5, 6, 4


@pytest.fixture(scope="module")
def zoo() -> Any:  # noqa: ANN401 - the tests' module of zoo-style torch modules
    require("torch")
    import torch_zoo

    return torch_zoo


def _export(module: Any, args: tuple, exporter: str, **options: Any) -> Any:  # noqa: ANN401
    """``export`` with its warnings recorded (returned beside the result)."""
    from spatialdrop_onnx.torch import export

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export(module, args, dynamo=exporter == "dynamo", **options)
    return result, [str(w.message) for w in caught]


# --- Probes: one output per site, structure and rate -----------------------------------


def _probe_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    q = rng.normal(size=(BATCH, HEADS, LENGTH, EMBED)).astype(np.float32)
    k = rng.normal(size=(BATCH, HEADS, SOURCE, EMBED)).astype(np.float32)
    identity = np.broadcast_to(np.eye(SOURCE, dtype=np.float32), (BATCH, HEADS, SOURCE, SOURCE))
    bool_mask = rng.random((LENGTH, SOURCE)) < 0.7
    bool_mask[:, 0] = True
    bool_mask[1] = False  # a row with every key masked: SDPA gives zeros there
    float_mask = np.where(rng.random((LENGTH, SOURCE)) < 0.3, -np.inf,
                          rng.normal(size=(LENGTH, SOURCE))).astype(np.float32)
    float_mask[:, 1] = 0.5
    float_mask[3] = -np.inf
    k1 = rng.normal(size=(BATCH, 1, SOURCE, EMBED)).astype(np.float32)
    x = rng.normal(size=(BATCH, LENGTH, SOURCE)).astype(np.float32)
    memory = rng.normal(size=(BATCH, SOURCE, SOURCE)).astype(np.float32)
    value = np.broadcast_to(np.eye(SOURCE, dtype=np.float32), (BATCH, SOURCE, SOURCE))
    tokens = (rng.random((32, 3, 4)) + 1).astype(np.float32)
    maps = (rng.random((32, 2, 2, 2)) + 1).astype(np.float32)
    return [q, k, identity.copy(), bool_mask, float_mask, k1, identity[:, :1].copy(), x,
            memory, value.copy(), tokens, maps]


#: Per output of ``Probes``: (name, p, owning module, site kind), from its definition.
PROBE_OUTPUTS = [
    ("sdpa", 0.3, "sdpa", "elementwise"),
    ("sdpa is_causal", 0.2, "sdpa", "elementwise"),
    ("sdpa bool mask", 0.25, "sdpa", "elementwise"),
    ("sdpa float mask", 0.35, "sdpa", "elementwise"),
    ("sdpa scale", 0.3, "sdpa", "elementwise"),
    ("sdpa enable_gqa", 0.4, "sdpa", "elementwise"),
    ("MultiheadAttention need_weights=False", 0.3, "mha.fused", "elementwise"),
    ("MultiheadAttention need_weights=True", 0.2, "mha.weights", "elementwise"),
    ("ConvNextDropPath", 0.3, "paths.drop_path", "spatial"),
    ("inline drop_connect", 0.25, "paths", "spatial"),
]
ATTENTION = range(8)
DROP_PATHS = {8: (10, (1, 2)), 9: (11, (1, 2, 3))}  # output: (input index, shared axes)


@dataclass(repr=False)  # thousands of arrays: keep a failing test's traceback short
class ProbeRuns:
    result: Any
    warnings: list[str]
    expected: list[np.ndarray]
    off: list[np.ndarray]
    on: list[list[np.ndarray]]


@pytest.fixture(scope="module")
def probe_runs(zoo) -> dict[str, ProbeRuns]:
    import torch

    inputs = _probe_inputs()
    tensors = tuple(torch.from_numpy(a) for a in inputs)
    torch.manual_seed(12)
    module = zoo.Probes()
    with torch.no_grad():
        expected = [t.numpy() for t in module.eval()(*tensors)]
    runs = {}
    for exporter in EXPORTERS:
        result, caught = _export(module, tensors, exporter, dynamic_batch=False)
        session = sd.inference_session(result.model)
        names = [i.name for i in session.get_inputs() if i.name != "training_mode"]
        feeds = {name: array for name, array in zip(names, inputs, strict=True)}
        off = session.run(None, {**feeds, "training_mode": np.array(False)})
        on = [session.run(None, {**feeds, "training_mode": np.array(True)}) for _ in range(RUNS)]
        runs[exporter] = ProbeRuns(result, caught, expected, off, on)
    return runs


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_probes_every_site_is_kept_and_reported(probe_runs, exporter) -> None:
    runs = probe_runs[exporter]
    model, report = runs.result
    onnx.checker.check_model(model, full_check=True)
    assert not report.left_out and not report.unconvertible and report.complete
    assert not runs.warnings
    sites = sorted((s.extra["module"], s.kind.value, round(s.ratio, 6)) for s in report.sites)
    assert sites == sorted((module, kind, p) for _, p, module, kind in PROBE_OUTPUTS)
    assert {s.training_mode for s in report.sites} == {"training_mode"}
    trained = {(m.module, m.module_type, m.what) for m in report.trained}
    assert trained == {("sdpa", "AttentionProbes", "F.scaled_dot_product_attention"),
                       ("mha.fused", "MultiheadAttention", "F.multi_head_attention_forward"),
                       ("mha.weights", "MultiheadAttention", "bernoulli_"),
                       ("paths.drop_path", "ConvNextDropPath", "rand"),
                       ("paths", "DropPathProbes", "rand")}
    ops = {n.op_type for n in model.graph.node}
    assert "RandomUniformLike" not in ops and "RandomUniform" not in ops


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("index", range(len(PROBE_OUTPUTS)),
                         ids=[name for name, *_ in PROBE_OUTPUTS])
def test_probes_training_off_equals_module_eval(probe_runs, exporter, index) -> None:
    runs = probe_runs[exporter]
    np.testing.assert_allclose(runs.off[index], runs.expected[index], rtol=1e-5, atol=1e-6)


def test_masked_rows_are_zero_as_in_torch(probe_runs) -> None:
    """A query row whose every key is masked gives zeros in torch's SDPA: so in ours."""
    expected = probe_runs["dynamo"].expected
    assert not expected[2][:, :, 1].any() and not expected[3][:, :, 3].any()
    assert expected[2][:, :, 0].sum() > 0 and expected[3][:, :, 0].sum() > 0


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("index", ATTENTION, ids=[PROBE_OUTPUTS[i][0] for i in ATTENTION])
def test_attention_probabilities_dropped_elementwise_at_rate(probe_runs, exporter,
                                                             index) -> None:
    runs = probe_runs[exporter]
    p = PROBE_OUTPUTS[index][1]
    probabilities = runs.off[index]
    live = probabilities > 1e-6  # masked keys are 0 in eval: nothing to drop there
    decisions = []
    for outputs in runs.on:
        output = outputs[index]
        dropped = output == 0
        kept = np.isclose(output, probabilities / (1 - p), rtol=1e-4, atol=1e-7)
        assert (dropped | kept)[live].all(), "an attention probability is neither 0 nor scaled"
        assert not output[~live].any()
        decisions.append(kept & live)
    decisions = np.stack(decisions)
    # Element-wise: decisions differ along batch, heads, queries and keys.
    assert_varies_along_unshared_axes(np.where(live, decisions, decisions[:, :1]), ())
    # The rate, over every run: the runs must be independent samples, which onnxruntime's own
    # Dropout does not give (successive masks are shifts of each other; inference_session
    # runs these sites as SpatialDropout, see test_sessions.py).
    assert_drop_fraction(decisions[:, live], p)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("index", list(DROP_PATHS), ids=[PROBE_OUTPUTS[i][0] for i in DROP_PATHS])
def test_drop_path_found_by_behaviour_drops_whole_samples(probe_runs, exporter, index) -> None:
    runs = probe_runs[exporter]
    source, axes = DROP_PATHS[index]
    p = PROBE_OUTPUTS[index][1]
    data = _probe_inputs()[source]
    np.testing.assert_array_equal(runs.off[index], data)
    decisions = keeps(data, [outputs[index] for outputs in runs.on], p, axes)
    assert decisions.shape[1:] == (data.shape[0],) + (1,) * (data.ndim - 1)
    assert_varies_along_unshared_axes(decisions, axes)
    assert_drop_fraction(decisions, p)


# --- Networks: the report, and training_mode false equals module.eval() -----------------


@dataclass(repr=False)
class NetExport:
    module: Any
    result: Any
    warnings: list[str]


def _bn_statistics(torch: Any, module: Any) -> None:  # noqa: ANN401
    """Running statistics a training-form BatchNorm would not use."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)


@pytest.fixture(scope="module")
def net_exports(zoo) -> dict[tuple[str, str], NetExport]:
    import torch

    exports = {}
    for exporter in EXPORTERS:
        torch.manual_seed(13)
        attention = zoo.AttentionNet().train()
        x = torch.rand(2, 5, 8)
        mask = torch.zeros(2, 1, 1, 5)
        mask[1, ..., 3:] = torch.finfo(torch.float32).min  # HF's extended padding mask
        result, caught = _export(attention, (x, mask), exporter)
        exports["attention", exporter] = NetExport(attention, result, caught)
        paths = zoo.DropPathNet().train()
        _bn_statistics(torch, paths)
        result, caught = _export(paths, (torch.rand(2, 3, 6, 6),), exporter)
        exports["paths", exporter] = NetExport(paths, result, caught)
    return exports


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_attention_net_keeps_attention_dropout(net_exports, exporter) -> None:
    export = net_exports["attention", exporter]
    model, report = export.result
    onnx.checker.check_model(model, full_check=True)
    attention = {("attention", "BertSelfAttention", "F.scaled_dot_product_attention"),
                 ("encoder.self_attn", "MultiheadAttention", "F.multi_head_attention_forward")}
    # nn.TransformerEncoderLayer's three nn.Dropout(0.1) are forced, as before.
    sites = [("attention", "elementwise", 0.25), ("encoder.self_attn", "elementwise", 0.2),
             ("encoder.dropout", "elementwise", 0.1), ("encoder.dropout1", "elementwise", 0.1),
             ("encoder.dropout2", "elementwise", 0.1)]
    ours = [w for w in export.warnings if "spatialdrop_onnx" in w]
    if exporter == "dynamo":  # torch.export decomposes the LSTM: its dropout is kept
        assert not report.left_out and report.complete and not ours
        assert {(m.module, m.module_type, m.what) for m in report.trained} == attention | {
            ("rnn", "LSTM", "bernoulli_")}
        sites.append(("rnn", "elementwise", 0.15))
    else:  # TorchScript refuses LSTM dropout in training: only the LSTM falls back
        assert [(x.module, x.what) for x in report.left_out] == [("rnn", "bernoulli_")]
        assert "SymbolicValueError" in report.left_out[0].reason
        assert {(m.module, m.module_type, m.what) for m in report.trained} == attention
        assert len(ours) == 1 and "rnn (bernoulli_)" in ours[0]
    found = sorted((s.extra["module"], s.kind.value, round(s.ratio, 6)) for s in report.sites)
    assert found == sorted(sites)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_drop_path_net_converts_every_drop_path(net_exports, exporter) -> None:
    export = net_exports["paths", exporter]
    model, report = export.result
    onnx.checker.check_model(model, full_check=True)
    assert not report.left_out and report.complete and not export.warnings
    # blocks.0 runs at rate 0.2 * 0 / 2 = 0: no drop-connect at all.
    assert {(m.module, m.module_type) for m in report.trained} == {
        ("stages.0.drop_path", "ConvNextDropPath"), ("blocks.1", "MBConvBlock")}
    sites = sorted((s.extra["module"], s.kind.value, round(s.ratio, 6), s.shared_axes)
                   for s in report.sites)
    assert sites == sorted([("stages.0.drop_path", "spatial", 0.3, (1, 2, 3)),
                            ("blocks.1", "spatial", 0.1, (1, 2, 3))])
    assert all(s.rule is not None for s in report.sites)  # the rewrite converted them


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("net", ["attention", "paths"])
def test_net_training_off_equals_module_eval(net_exports, exporter, net) -> None:
    import torch

    export = net_exports[net, exporter]
    rng = np.random.default_rng(14)
    if net == "attention":  # batch 3: the batch is dynamic
        mask = np.zeros((3, 1, 1, 5), np.float32)
        mask[2, ..., 1:] = np.finfo(np.float32).min
        inputs = [rng.random((3, 5, 8), dtype=np.float32), mask]
    else:
        inputs = [rng.random((3, 3, 6, 6), dtype=np.float32)]
    with torch.no_grad():
        expected = export.module.eval()(*map(torch.from_numpy, inputs)).numpy()
    export.module.train()
    session = sd.inference_session(export.result.model)
    names = [i.name for i in session.get_inputs() if i.name != "training_mode"]
    feeds = dict(zip(names, inputs, strict=True))
    off = session.run(None, feeds)[0]
    np.testing.assert_allclose(off, expected, rtol=1e-5, atol=1e-5)
    # Per-sample decisions on 3 samples can repeat: look at 12 runs.
    on = [session.run(None, {**feeds, "training_mode": np.array(True)})[0] for _ in range(12)]
    assert any(not np.allclose(o, off) for o in on) and len({o.tobytes() for o in on}) > 1


# --- What cannot be reached in training form falls back, quietly -------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_layer_drop_on_a_random_branch_falls_back_to_eval(zoo, exporter, capfd) -> None:
    """``if self.training and torch.rand(1) < p: continue`` (fairseq's LayerDrop) is a
    Python branch on a random number: exported with the flag on it would freeze one draw
    (TorchScript) or fail (torch.export). It must come out in eval form, reported, with
    none of torch's output about the discarded attempt."""
    import torch

    torch.manual_seed(15)
    module = zoo.LayerDrop()
    data = torch.rand(2, 3, 4)
    (model, report), caught = _export(module, (data,), exporter)
    assert [(x.module, x.what) for x in report.left_out] == [("", "rand x2")]
    assert "eval form" in report.left_out[0].reason and not report.trained
    assert len(caught) == 1 and "spatialdrop_onnx.torch.export" in caught[0]
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    with torch.no_grad():
        expected = module.eval()(data).numpy()
    session = sd.inference_session(model)
    for training in (False, True):  # nothing random is left
        np.testing.assert_allclose(
            session.run(None, {"x": data.numpy(), "training_mode": np.array(training)})[0]
            if "training_mode" in {i.name for i in session.get_inputs()}
            else session.run(None, {"x": data.numpy()})[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_prints_nothing_of_torchs_own(zoo, exporter, capfd) -> None:
    """No "torchvision is not installed" log lines, no LeafSpec FutureWarning (dynamo), no
    "Custom opset domain ... not used" (TorchScript, a model without channel dropout)."""
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2))
    (model, report), caught = _export(module, (torch.rand(2, 4),), exporter)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert caught == []
    assert [s.kind.value for s in report.sites] == ["elementwise"]
    assert sd.DOMAIN not in {o.domain for o in model.opset_import} or any(
        n.domain == sd.DOMAIN for n in model.graph.node)


def test_torchscript_declares_our_domain_when_it_writes_our_op(zoo) -> None:
    import torch

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Dropout2d(0.2))
    model = _export(module, (torch.rand(2, 3, 4, 4),), "torchscript")[0].model
    assert {o.domain: o.version for o in model.opset_import}[sd.DOMAIN] == sd.OPSET_VERSION


def test_rate_checks_can_fail() -> None:
    """The statistical check used above rejects a wrong rate (guards the tests themselves)."""
    decisions = np.random.default_rng(16).random(20000) >= 0.5
    with pytest.raises(AssertionError):
        assert_drop_fraction(decisions, 0.3)
    assert math.isclose(1 - decisions.mean(), 0.5, abs_tol=0.02)


def test_torch_dynamo_export_with_channel_dropout_folds():
    """The torch helper's own dynamo export of a DenseNet-like block declares the mask."""
    torch = require("torch")
    from torch import nn

    from spatialdrop_onnx.torch import export

    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.drop = nn.Dropout2d(0.2)
            self.head = nn.Linear(11, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cat([x, self.drop(torch.relu(self.conv(x)))], 1)
            return torch.softmax(self.head(y.mean((2, 3))), -1)

    torch.manual_seed(0)
    source, _ = export(Dense().eval(), (torch.randn(2, 3, 8, 8),))
    masks = {o for n in source.graph.node if n.op_type == "SpatialDropout" for o in n.output[1:]}
    declared = [v for v in source.graph.value_info if v.name in masks]
    assert [d.dim_value for d in declared[0].type.tensor_type.shape.dim[2:]] == [1, 1]
    _, report = sd.monte_carlo(source, samples=4)
    assert report.foldable and report.chunked, report.reason
