"""Rewrite rules on real PyTorch dynamo exports (training mode).

All exports come from ``models/export_torch.py`` through one session fixture.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from optional import require
from passes_helpers import (
    assert_no_dropout,
    assert_same,
    check_noise_slices,
    count,
    flag,
    full_check,
    load_script,
    run,
    session,
)

import spatialdrop_onnx as sd

RANDOM_SITES = ["dropout1d", "dropout2d_static", "dropout2d_dynamic", "dropout3d",
                "droppath_static", "droppath_dynamic", "mixed"]
NEAR_MISS = ["near_unscaled", "near_grows"]


@pytest.fixture(scope="session")
def torch_exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require("torch")
    return load_script("export_torch").export_torch_models(tmp_path_factory.mktemp("torch"))


def _input_name(model: onnx.ModelProto) -> str:
    return model.graph.input[0].name


def _feeds(model: onnx.ModelProto, export: object, training: bool | None = None) -> dict:
    feeds = {_input_name(model): export.sample}
    if training is not None:
        feeds["training_mode"] = flag(training)
    return feeds


@pytest.mark.parametrize("name", RANDOM_SITES)
def test_inspect_finds_each_torch_site(torch_exports: dict, name: str) -> None:
    export = torch_exports[name]
    sites = [s for s in sd.inspect(onnx.load(export.path)) if s.kind == "random-subgraph"]
    assert [list(s.shared_axes) for s in sites] == export.expected_axes
    assert all(s.rule.startswith("torch_dynamo_") for s in sites)
    droppath = [s for s in sites if s.rule == "torch_dynamo_droppath"]
    assert all(math.isclose(s.ratio, 0.2, rel_tol=1e-6) for s in droppath)


@pytest.mark.parametrize("name", RANDOM_SITES + ["dropout"])
def test_rewrite_torch_export(torch_exports: dict, name: str) -> None:
    export = torch_exports[name]
    model = onnx.load(export.path)
    rewritten, report = sd.rewrite(model)
    full_check(rewritten)
    assert not report.unconvertible
    assert count(rewritten, "RandomUniformLike") == 0
    assert count(rewritten, sd.OP_TYPE) == len(export.expected_axes)
    assert len(report.rewired) == export.onnx_dropouts
    # Every dropout reads the one training_mode input.
    flags = {n.input[2] for n in rewritten.graph.node if n.op_type in ("Dropout", sd.OP_TYPE)}
    assert flags == {"training_mode"}
    if export.dynamic:
        assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        assert rewritten.graph.output[0].type.tensor_type.shape.dim[0].dim_param
    off = run(rewritten, _feeds(rewritten, export, False))
    np.testing.assert_allclose(off[0], export.inference, rtol=1e-5, atol=1e-6)
    for source in (model, rewritten):
        stripped = sd.strip(source).model
        full_check(stripped)
        assert_no_dropout(stripped)
        assert_same(run(stripped, _feeds(stripped, export)), off)
    assert sd.rewrite(rewritten).model.SerializeToString() == rewritten.SerializeToString()


@pytest.mark.parametrize("name", [n for n in RANDOM_SITES if n != "mixed"])
def test_torch_sites_in_training_mode(torch_exports: dict, name: str) -> None:
    export = torch_exports[name]
    model = onnx.load(export.path)
    rewritten = sd.rewrite(model).model
    ratio = next(s.ratio for s in sd.inspect(model))
    off = run(rewritten, _feeds(rewritten, export, False))[0]
    training = session(rewritten)
    outputs = [run(training, _feeds(rewritten, export, True))[0] for _ in range(12)]
    for output in outputs:
        check_noise_slices(off, output, ratio, export.output_axes)
    assert len({o.tobytes() for o in outputs}) > 1


def test_dynamic_batch_other_size(torch_exports: dict) -> None:
    """The noise shape read from the model input's Shape follows a new batch size."""
    export = torch_exports["droppath_dynamic"]
    rewritten = sd.rewrite(onnx.load(export.path)).model
    x = np.concatenate([export.sample] * 3)
    off = run(rewritten, {"x": x, "training_mode": flag(False)})[0]
    on = run(rewritten, {"x": x, "training_mode": flag(True)})[0]
    assert on.shape == x.shape[:1] + off.shape[1:]
    check_noise_slices(off, on, 0.2, [1, 2, 3])


@pytest.mark.parametrize("name,reason", [
    ("near_unscaled", "no rule matches"),
    ("near_grows", "noise dim 2 is 3, neither 1 nor the data dim 1"),
])
def test_near_miss_torch_modules_stay_unconverted(torch_exports: dict, name: str,
                                                  reason: str) -> None:
    model = onnx.load(torch_exports[name].path)
    sites = sd.inspect(model)
    assert [s.kind for s in sites] == ["unconvertible"]
    assert reason in sites[0].reason
    rewritten, report = sd.rewrite(model)
    assert len(report.unconvertible) == 1 and not report.converted
    assert count(rewritten, "RandomUniformLike") == 1
