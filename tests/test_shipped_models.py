"""The real exports shipped in models/onnx/ through the CLI: inspect, rewrite, strip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "onnx"

# model -> (ratio, shared axes per site, SpatialDropout nodes after rewrite)
EXPECTED = {
    "keras_conv2d_spatial2d": (0.3, [[2, 3]], 1),
    "keras_gru": (0.3, [[], []], 2),
    "torch_dropout2d_dynamic": (0.3, [[2, 3]], 1),
    "torch_droppath_dynamic": (0.2, [[1, 2, 3]], 1),
}


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for graph_input in model.graph.input:
        if graph_input.name in {i.name for i in model.graph.initializer}:
            continue
        dims = [d.dim_value or 3 for d in graph_input.type.tensor_type.shape.dim]
        feeds[graph_input.name] = (rng.random(dims) + 0.5).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_json_finds_each_site(name, capsys):
    assert main(["inspect", str(SHIPPED / f"{name}.onnx"), "--json"]) == 0
    sites = json.loads(capsys.readouterr().out)
    ratio, axes, _ = EXPECTED[name]
    assert sorted(s["shared_axes"] for s in sites) == sorted(axes)
    assert all(s["kind"] == "random-subgraph" and s["ratio"] == ratio and s["graph"] == "main"
               for s in sites)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rewrite_then_strip(name, tmp_path):
    source = SHIPPED / f"{name}.onnx"
    before = source.read_bytes()
    rewritten, stripped = tmp_path / "rewritten.onnx", tmp_path / "stripped.onnx"
    assert main(["rewrite", str(source), "-o", str(rewritten)]) == 0
    assert main(["strip", str(rewritten), "-o", str(stripped)]) == 0
    assert source.read_bytes() == before  # the input is never modified

    model = onnx.load(rewritten)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(sd.OP_TYPE) == EXPECTED[name][2]
    assert not {"StatelessRandomUniformV2", "RandomUniformLike", "RandomUniform"} & set(ops)
    assert "training_mode" in [i.name for i in model.graph.input]

    plain = onnx.load(stripped)
    onnx.checker.check_model(plain, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    assert "training_mode" not in [i.name for i in plain.graph.input]

    feeds = _feeds(plain)
    inference = sd.inference_session(plain, native=False).run(None, feeds)
    for native in (False, True):
        session = sd.inference_session(model, native=native)
        off = session.run(None, {**feeds, "training_mode": np.array(False)})
        for got, want in zip(off, inference, strict=True):
            np.testing.assert_array_equal(got, want)
        on = [session.run(None, {**feeds, "training_mode": np.array(True)})[0] for _ in range(3)]
        assert any((o != inference[0]).any() for o in on), "training mode never dropped"
