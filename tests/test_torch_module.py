"""spatialdrop_onnx.torch: real exports through both exporters, checked in onnxruntime.

Two zoo-style modules (``tests/torch_zoo.py``) are exported once per exporter and
shared: ``ZooNet`` (every way zoos write dropout; report, eval equality, BatchNorm,
state) and ``Heads`` (one dropout per output, so each mask is visible: structure
and rate against PyTorch's own, in one onnxruntime session per model).
"""

from __future__ import annotations

import json
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
from spatialdrop_onnx.errors import UserError

EXPORTERS = ["dynamo", "torchscript"]
RUNS = 200  # stochastic passes per model, for the rate checks


@pytest.fixture(scope="session")
def zoo() -> Any:  # noqa: ANN401 - the tests' module of zoo-style torch modules
    require("torch")
    import torch_zoo

    return torch_zoo


@dataclass(repr=False)  # a failing test's traceback shows its arguments: keep that short
class ZooExport:
    module: Any
    result: Any
    warnings: list[str]
    state_before: dict[str, Any]
    state_after: dict[str, Any]
    path: Any = None


def _state(torch: Any, module: Any) -> dict[str, Any]:  # noqa: ANN401
    return {"flags": [m.training for m in module.modules()],
            "buffers": [b.clone() for b in module.buffers()],
            "rng": torch.get_rng_state()}


@pytest.fixture(scope="session")
def zoo_exports(zoo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooExport]:
    import torch

    from spatialdrop_onnx.torch import export

    exports = {}
    for exporter in EXPORTERS:
        torch.manual_seed(0)
        module = zoo.ZooNet()
        with torch.no_grad():  # statistics a training-form BatchNorm would not use
            for bn in (module.stem[1], module.blocks[0].bn, module.blocks[1].bn):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
        module.train()  # export must not depend on, nor change, the flags
        data = torch.rand(2, 3, 6, 6)
        before = _state(torch, module)
        path = tmp_path_factory.mktemp("zoo") / "zoo.onnx" if exporter == "torchscript" else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = export(module, (data,), path,
                            dynamo=exporter == "dynamo")
        exports[exporter] = ZooExport(module, result,
                                      [str(w.message) for w in caught
                                       if "spatialdrop_onnx.torch" in str(w.message)],
                                      before, _state(torch, module), path)
    return exports


# --- ZooNet: the report ----------------------------------------------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_report_lists_forced_functional_calls_by_module(zoo_exports, exporter) -> None:
    forced = [(c.module, c.module_type, c.function, round(c.p, 6))
              for c in zoo_exports[exporter].result.report.forced]
    # In call order, from ZooNet's definition.
    assert forced == [
        ("blocks.0", "Block", "F.dropout2d", 0.2),
        ("blocks.0", "Block", "torch.feature_dropout", 0.1),
        ("blocks.1", "Block", "F.dropout2d", 0.2),
        ("blocks.1", "Block", "torch.feature_dropout", 0.1),
        ("drop2d", "Dropout2d", "F.dropout2d", 0.15),
    ]
    # The root draws a mask under `if self.training:`: it is exported with its own flag
    # on, so its calls run in training mode without being forced.
    report = zoo_exports[exporter].result.report
    trained = [(m.module, m.module_type, m.what) for m in report.trained]
    assert trained == [("", "ZooNet", "bernoulli_")]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_what_cannot_be_converted_is_reported_and_warned(zoo_exports, exporter) -> None:
    export = zoo_exports[exporter]
    report = export.result.report
    left = {(x.module, x.what): x for x in report.left_out}
    assert set(left) == {("", "F.alpha_dropout"), ("alpha", "F.alpha_dropout"),
                         ("blocks.1.drop_path", "DropPath")}
    assert "no SpatialDropout equivalent" in left["alpha", "F.alpha_dropout"].reason
    assert left["alpha", "F.alpha_dropout"].p == pytest.approx(0.1)
    assert "could not be converted" in left["blocks.1.drop_path", "DropPath"].reason
    assert not report.unconvertible and not report.complete
    assert len(export.warnings) == 1
    assert all(f"{name} ({what})" in export.warnings[0]
               for name, what in (("<root>", "F.alpha_dropout"), ("alpha", "F.alpha_dropout"),
                                  ("blocks.1.drop_path", "DropPath")))
    assert any("EliminateDropout" in note for note in report.notes)
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_every_site_is_in_the_model_with_its_axes(zoo_exports, exporter) -> None:
    model, report = zoo_exports[exporter].result
    onnx.checker.check_model(model, full_check=True)
    sites = sorted((s.extra["module"], s.kind.value, round(s.ratio, 6), s.shared_axes)
                   for s in report.sites)
    assert sites == sorted([
        ("blocks.0", "spatial", 0.2, (2, 3)),
        ("blocks.0", "spatial", 0.1, (2, 3)),
        ("blocks.0.drop_path", "spatial", 0.2, (1, 2, 3)),
        ("blocks.1", "spatial", 0.2, (2, 3)),
        ("blocks.1", "spatial", 0.1, (2, 3)),
        ("drop2d", "spatial", 0.15, (2, 3)),
        ("", "spatial", 0.05, (2, 3)),
        ("", "spatial", 0.3, (2,)),
        ("", "elementwise", 0.5, ()),  # under `if self.training:`
        ("", "elementwise", 0.25, ()),
        ("", "elementwise", 0.35, ()),
    ])
    assert {s.training_mode for s in report.sites} == {"training_mode"}
    assert not any(n.op_type in ("RandomUniformLike", "Bernoulli") for n in model.graph.node)
    # The exporter writes channel dropout itself; the rewrite converts DropPath.
    direct = [s for s in report.sites if s.rule is None and s.kind.value == "spatial"]
    assert {s.extra["module"] for s in direct} >= {"blocks.0", "blocks.1", "drop2d"}
    droppath = next(s for s in report.sites if s.extra["module"] == "blocks.0.drop_path")
    assert droppath.rule is not None


# --- ZooNet: the model in onnxruntime --------------------------------------------------


@pytest.fixture(scope="session")
def zoo_sessions(zoo_exports) -> dict[str, Any]:
    return {name: sd.inference_session(export.result.model)
            for name, export in zoo_exports.items()}


def _zoo_feeds(data: np.ndarray, training: bool | None = None) -> dict[str, np.ndarray]:
    feeds = {"x": data}
    if training is not None:
        feeds["training_mode"] = np.array(training)
    return feeds


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_training_off_equals_module_eval(zoo_exports, zoo_sessions, exporter) -> None:
    import torch

    export = zoo_exports[exporter]
    data = np.random.default_rng(3).random((5, 3, 6, 6), dtype=np.float32)  # batch 5: dynamic
    with torch.no_grad():
        expected = export.module.eval()(torch.from_numpy(data)).numpy()
        # BatchNorm in training form (batch statistics) would be far off:
        stem = export.module.stem
        batch_stats = stem.train()(torch.from_numpy(data)) - stem.eval()(torch.from_numpy(data))
    assert batch_stats.abs().max() > 0.1
    session = zoo_sessions[exporter]
    default = session.run(None, _zoo_feeds(data))[0]
    np.testing.assert_allclose(default, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(session.run(None, _zoo_feeds(data, False))[0], default)
    np.testing.assert_array_equal(session.run(None, _zoo_feeds(data))[0], default)
    assert not any(n.op_type == "BatchNormalization" and len(n.output) > 1
                   for n in export.result.model.graph.node)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_training_on_is_random(zoo_exports, zoo_sessions, exporter) -> None:
    data = np.random.default_rng(4).random((5, 3, 6, 6), dtype=np.float32)
    session = zoo_sessions[exporter]
    off = session.run(None, _zoo_feeds(data, False))[0]
    on = [session.run(None, _zoo_feeds(data, True))[0] for _ in range(2)]
    assert not np.allclose(on[0], off) and not np.array_equal(on[0], on[1])


def test_module_flags_buffers_and_random_state_are_kept(zoo_exports) -> None:
    import torch

    for export in zoo_exports.values():
        before, after = export.state_before, export.state_after
        assert after["flags"] == before["flags"] and all(before["flags"])
        assert all(torch.equal(a, b) for a, b in zip(before["buffers"], after["buffers"],
                                                      strict=True))
        assert torch.equal(before["rng"], after["rng"])


def test_path_gets_the_returned_model(zoo_exports) -> None:
    export = zoo_exports["torchscript"]
    saved = onnx.load(export.path)
    assert saved.SerializeToString() == export.result.model.SerializeToString()


# --- Heads: structure and rate against PyTorch -----------------------------------------

#: (inputs' shapes) and per output of Heads: (input index, p, shared axes), from its definition.
HEAD_SHAPES = [(16, 8, 4), (8, 6, 3, 3), (4, 4, 2, 2, 2), (24, 5), (16, 2, 2, 2), (32, 3, 4)]
HEAD_OUTPUTS = [
    ("Dropout1d", 0, 0.3, (2,)),
    ("Dropout1d unbatched", 3, 0.35, (1,)),
    ("Dropout2d", 1, 0.4, (2, 3)),
    ("Dropout3d", 2, 0.25, (2, 3, 4)),
    ("Dropout3d unbatched", 4, 0.3, (1, 2, 3)),
    ("F.dropout1d unbatched", 3, 0.2, (1,)),
    ("F.dropout2d", 1, 0.5, (2, 3)),
    ("F.dropout3d", 2, 0.4, (2, 3, 4)),
    ("torch.feature_dropout", 0, 0.2, (2,)),
    ("DropPath tokens", 5, 0.3, (1, 2)),
    ("StochasticDepth row", 1, 0.3, (1, 2, 3)),
    ("StochasticDepth batch", 1, 0.4, (0, 1, 2, 3)),
    ("F.dropout", 0, 0.3, ()),
    ("F.dropout2d again", 1, 0.5, (2, 3)),
    ("F.dropout again", 0, 0.3, ()),
]
#: Output pairs computed by identical calls (the exporter must not merge them).
HEAD_TWINS = [(6, 13), (12, 14)]


@dataclass(repr=False)  # thousands of arrays: keep a failing test's traceback short
class HeadRuns:
    inputs: list[np.ndarray]
    onnx_off: list[np.ndarray]
    onnx_on: list[list[np.ndarray]]
    torch_on: list[list[np.ndarray]]
    model: onnx.ModelProto


@pytest.fixture(scope="session")
def head_runs(zoo) -> dict[str, HeadRuns]:
    import torch

    from spatialdrop_onnx.torch import export

    rng = np.random.default_rng(5)
    inputs = [(rng.random(shape) + 1.0).astype(np.float32) for shape in HEAD_SHAPES]
    tensors = tuple(torch.from_numpy(a) for a in inputs)
    module = zoo.Heads()
    with torch.no_grad():
        module.train()
        torch.manual_seed(6)
        torch_on = [[t.numpy() for t in module(*tensors)] for _ in range(RUNS)]
    runs = {}
    for exporter in EXPORTERS:
        model = export(module, tensors, dynamo=exporter == "dynamo", dynamic_batch=False).model
        session = sd.inference_session(model)
        names = [i.name for i in session.get_inputs()]
        feeds = dict(zip(names, inputs, strict=False))
        off = session.run(None, feeds)
        on = [session.run(None, {**feeds, "training_mode": np.array(True)}) for _ in range(RUNS)]
        runs[exporter] = HeadRuns(inputs, off, on, torch_on, model)
    return runs


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("index", range(len(HEAD_OUTPUTS)),
                         ids=[name for name, *_ in HEAD_OUTPUTS])
def test_structure_and_rate_match_pytorch(head_runs, exporter, index) -> None:
    runs = head_runs[exporter]
    _, source, p, axes = HEAD_OUTPUTS[index]
    data = runs.inputs[source]
    np.testing.assert_array_equal(runs.onnx_off[index], data)
    ours = keeps(data, [outputs[index] for outputs in runs.onnx_on], p, axes)
    theirs = keeps(data, [outputs[index] for outputs in runs.torch_on], p, axes)
    for decisions in (ours, theirs):
        assert_varies_along_unshared_axes(decisions, axes)
        assert_drop_fraction(decisions, p)
    n, m = ours.size, theirs.size
    gap = abs((1 - ours.mean()) - (1 - theirs.mean()))
    assert gap <= 4 * math.sqrt(p * (1 - p) * (1 / n + 1 / m)), (ours.mean(), theirs.mean())


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_heads_sites_are_spatial_dropout_reading_the_switch(head_runs, exporter) -> None:
    model = head_runs[exporter].model
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(sd.OP_TYPE) == 13 and ops.count("Dropout") == 2
    assert "RandomUniformLike" not in ops
    assert [i.name for i in model.graph.input][-1] == "training_mode"
    assert not any(a.name == "seed" for n in model.graph.node for a in n.attribute)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_identical_dropout_calls_keep_their_own_masks(head_runs, exporter) -> None:
    runs = head_runs[exporter]
    for first, second in HEAD_TWINS:
        differ = sum(not np.array_equal(outputs[first], outputs[second])
                     for outputs in runs.onnx_on)
        assert differ > 0, f"outputs {first} and {second} share one mask"


# --- register_symbolics: torch's own TorchScript export --------------------------------


def _raw_torchscript(torch: Any, module: Any, args: tuple, training: Any) -> onnx.ModelProto:  # noqa: ANN401
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, training=training,
                          custom_opsets={sd.DOMAIN: sd.OPSET_VERSION})
    return onnx.load_from_string(buffer.getvalue())


def test_register_symbolics_writes_spatial_dropout_in_training_export(zoo) -> None:
    import torch
    from torch import nn

    from spatialdrop_onnx.torch import register_symbolics

    class Channels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d1, self.d2, self.d3 = nn.Dropout1d(0.1), nn.Dropout2d(0.2), nn.Dropout3d(0.3)

        def forward(self, ncl, nchw, ncdhw, cl, cdhw):  # noqa: ANN001, ANN201
            f = torch.nn.functional
            return (self.d1(ncl), self.d1(cl), self.d2(nchw), self.d3(ncdhw), self.d3(cdhw),
                    f.dropout1d(ncl, 0.4, self.training), f.dropout2d(nchw, 0.5, self.training),
                    f.dropout3d(cdhw, 0.6, self.training))

    register_symbolics()
    register_symbolics()  # idempotent
    rng = np.random.default_rng(7)
    shapes = [(4, 6, 5), (4, 6, 3, 3), (4, 6, 2, 2, 2), (16, 5), (12, 2, 2, 2)]
    inputs = [(rng.random(s) + 1).astype(np.float32) for s in shapes]
    module = Channels().train()
    raw = _raw_torchscript(torch, module, tuple(map(torch.from_numpy, inputs)),
                           torch.onnx.TrainingMode.TRAINING)
    nodes = [n for n in raw.graph.node if n.op_type == sd.OP_TYPE]
    found = sorted((round(onnx.numpy_helper.to_array(_constant(raw, n.input[1])).item(), 6),
                    list(onnx.helper.get_attribute_value(sd_attr(n, "shared_axes"))))
                   for n in nodes)
    # At the ATen level unbatched input has gained its batch axis: axes are 2..rank-1.
    assert found == sorted([(0.1, [2]), (0.1, [2]), (0.2, [2, 3]), (0.3, [2, 3, 4]),
                            (0.3, [2, 3, 4]), (0.4, [2]), (0.5, [2, 3]), (0.6, [2, 3, 4])])
    assert "training_mode" not in {i.name for i in raw.graph.input}
    model, report = sd.rewrite(raw)
    onnx.checker.check_model(model, full_check=True)
    assert len(report.rewired) == 8 and not report.unconvertible
    session = sd.inference_session(model)
    feeds = dict(zip([i.name for i in session.get_inputs()], inputs, strict=True))
    for output, source in zip(session.run(None, feeds), [0, 3, 1, 2, 4, 0, 1, 4], strict=True):
        np.testing.assert_array_equal(output, inputs[source])
    on = session.run(None, {**feeds, "training_mode": np.array(True)})
    keeps(inputs[3], [on[1]], 0.1, (1,))  # unbatched Dropout1d: channels of (C, L)
    keeps(inputs[4], [on[7]], 0.6, (1, 2, 3))  # unbatched F.dropout3d


def sd_attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)


def _constant(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return node.attribute[0].t
    return next(t for t in model.graph.initializer if t.name == name)


@pytest.mark.parametrize("layer", ["AlphaDropout", "FeatureAlphaDropout"])
def test_register_symbolics_refuses_alpha_dropout_in_training(zoo, layer) -> None:
    import torch

    from spatialdrop_onnx.torch import register_symbolics

    register_symbolics()
    module = getattr(torch.nn, layer)(0.2)
    data = (torch.rand(2, 3, 4),)
    with pytest.raises(torch.onnx.errors.SymbolicValueError,
                       match="no SpatialDropout equivalent"):
        _raw_torchscript(torch, module.train(), data, torch.onnx.TrainingMode.TRAINING)
    model = _raw_torchscript(torch, module.eval(), data, torch.onnx.TrainingMode.EVAL)
    assert [n.op_type for n in model.graph.node] in ([], ["Identity"])


# --- Arguments ------------------------------------------------------------------------


def test_bad_arguments_are_refused_before_exporting(zoo, tmp_path) -> None:
    import torch

    from spatialdrop_onnx.torch import export

    module = torch.nn.Dropout2d(0.5)
    data = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export(lambda x: x, (data,))
    with pytest.raises(TypeError, match="args"):
        export(module, {"x": data})
    with pytest.raises(TypeError, match="training_default"):
        export(module, (data,), training_default="yes")
    with pytest.raises(TypeError, match="train_modules"):
        export(module, (data,), train_modules="DropPath")
    with pytest.raises(ValueError, match="at least 15"):
        export(module, (data,), opset=13)
    with pytest.raises(UserError):
        export(module, (data,), tmp_path / "missing" / "model.onnx")
