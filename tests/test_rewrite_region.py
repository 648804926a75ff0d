"""Large graphs are rewritten through a region around their sites (passes/region.py).

The region path must give what converting the whole model gives: the same sites,
the same shared axes, a valid model in topological order, the same outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from passes_helpers import full_check, load_script

import spatialdrop_onnx as sd
from spatialdrop_onnx.passes import region

bench = load_script("bench_rewrite", "scripts")


@pytest.fixture(scope="module")
def large() -> onnx.ModelProto:
    model = bench.build(3000, 6)  # 3,000 Add/Relu nodes, 6 Dropout2d sites spread along
    assert len(model.graph.node) >= region.MIN_NODES
    return model


def _sites(report: sd.RewriteReport) -> list[tuple]:
    return sorted((s.name, s.ratio, s.shared_axes, s.becomes) for s in report.converted)


def test_region_path_matches_the_whole_model_path(large, monkeypatch) -> None:
    assert region.extract(large) is not None  # the region path is taken
    by_region, region_report = sd.rewrite(large)
    monkeypatch.setattr(region, "MIN_NODES", 10**9)
    assert region.extract(large) is None
    whole, whole_report = sd.rewrite(large)
    assert _sites(region_report) == _sites(whole_report) and len(region_report.converted) == 6
    for model in (by_region, whole):
        full_check(model)
    x = (np.random.default_rng(0).random((2, 4, 8, 8)) + 1).astype(np.float32)
    outputs = {}
    for label, model in (("region", by_region), ("whole", whole)):
        session = sd.inference_session(model)
        outputs[label] = session.run(None, {"x": x, "training_mode": np.array(False)})[0]
        # Training on: whole channels dropped, in every run.
        trained = session.run(None, {"x": x, "training_mode": np.array(True)})[0]
        assert ((trained == 0).all(axis=(2, 3)) | (trained != 0).all(axis=(2, 3))).all()
    np.testing.assert_array_equal(outputs["region"], outputs["whole"])
    # No node of the random subgraphs or their RNG constants is left behind.
    assert not {"RandomUniformLike", "Less"} & {n.op_type for n in by_region.graph.node}
    assert [i.name for i in by_region.graph.initializer] == \
        [i.name for i in whole.graph.initializer]


def test_region_splice_keeps_untouched_nodes_in_order(large) -> None:
    rewritten = sd.rewrite(large).model
    untouched = [n.output[0] for n in large.graph.node if n.op_type in ("Add", "Relu")]
    kept = [n.output[0] for n in rewritten.graph.node if n.op_type in ("Add", "Relu")]
    assert [name for name in kept if name in set(untouched)] == \
        [name for name in untouched if name in set(kept)]


def test_a_rewrite_walks_its_input_once(large, monkeypatch) -> None:
    """Every walk of a large model's scopes costs ~0.5 µs per node; one rewrite asked for
    its input's a dozen times. Inside ``unchanged_scopes`` the input is walked once per
    flag, and a model outside the promise is walked every time."""
    from spatialdrop_onnx.graph import scopes

    walked: list[int] = []
    real_walk = scopes._walk_model

    def counting_walk(model: onnx.ModelProto, include_ours: bool) -> list:
        walked.append(id(model))
        return real_walk(model, include_ours)

    monkeypatch.setattr(scopes, "_walk_model", counting_walk)
    sd.rewrite(large)
    assert walked.count(id(large)) == 2  # include_ours False and True, once each

    walked.clear()
    with scopes.unchanged_scopes(large):
        first = scopes.model_scopes(large)
        first.clear()  # a caller's list is its own
        again = scopes.model_scopes(large)
        other = onnx.ModelProto()
        other.CopyFrom(large)
        scopes.model_scopes(other)
        scopes.model_scopes(other)
    assert again and again[0].graph is large.graph
    assert walked == [id(large), id(other), id(other)]
    scopes.model_scopes(large)  # the promise ended with the block
    assert walked[-1] == id(large) and len(walked) == 4
