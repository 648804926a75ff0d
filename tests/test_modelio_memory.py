"""Issue 12 item 4: embedded weights are not held in memory by inspect, strip and rewrite.

A model with 320 MB of embedded float weights (``scripts/bench_memory.py``:
three initializers and one ``Constant``, a random-mask site and a Dropout) goes
through each CLI command in a child that reports its own peak RSS (VmHWM):
``inspect`` ≤ 0.5× the file, ``strip`` / ``rewrite`` ≤ 1.5×, and every weight
of the outputs has the bytes the generator wrote. With the size threshold
lowered, the skeleton path gives exactly the models the whole-file path gives,
through the Python API (placeholders filled) and through files (weights copied
from the source), also when the opset is converted first (the initializers'
placeholders kept out of the converter); onnxruntime runs them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from passes_helpers import load_script

import spatialdrop_onnx as sd
from spatialdrop_onnx import modelio
from spatialdrop_onnx.modelio import skeleton
from spatialdrop_onnx.passes import rewrite_file, strip_file

bench = load_script("bench_memory", "scripts")
MEGABYTES = 320


def weight_digests(model: onnx.ModelProto) -> dict[str, str]:
    """SHA-256 of the raw bytes of every large initializer and Constant value."""
    found = {init.name: init.raw_data for init in model.graph.initializer}
    found.update({node.output[0]: node.attribute[0].t.raw_data for node in model.graph.node
                  if node.op_type == "Constant" and node.attribute[0].t.raw_data})
    return {name: hashlib.sha256(data).hexdigest() for name, data in found.items()
            if len(data) > 4096}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("memory") / "embedded.onnx"
    return path, bench.build_model(path, MEGABYTES)


def test_peak_memory_of_each_command_and_exact_weights(big: tuple[Path, dict]) -> None:
    path, digests = big
    size_mb = path.stat().st_size / (1 << 20)
    assert size_mb > MEGABYTES
    results = bench.measure(path)
    for command, goal in bench.GOALS.items():
        assert results[command]["code"] == 0, results
        assert results[command]["peak_mb"] <= goal * size_mb, (command, results, size_mb)
    for command in ("strip", "rewrite"):
        model = onnx.load(path.with_name(f"{path.stem}.{command}.onnx"))
        assert weight_digests(model) == digests, command
        ops = [node.op_type for node in model.graph.node]
        assert "RandomUniformLike" not in ops, command
        assert ("Dropout" in ops) == (command == "rewrite"), command


@pytest.fixture
def small_skeletons(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small files read as skeletons too (tensors above the default 4 KiB stay in them)."""
    monkeypatch.setattr(skeleton, "MIN_FILE_BYTES", 0)


@pytest.mark.parametrize("opset", [17, 13], ids=["opset17", "opset13_converted"])
def test_skeleton_path_gives_the_whole_file_results(opset: int, tmp_path: Path,
                                                    small_skeletons: None) -> None:
    import onnxruntime as ort
    path = tmp_path / "model.onnx"
    digests = bench.build_model(path, 1.0, opset=opset)
    whole = onnx.load(path)
    assert sum(1 for _ in skeleton.placeholder_tensors(
        modelio.load_model(path, skeleton=True).model)) == 4
    assert sd.inspect(path) == sd.inspect(whole)
    x = np.random.default_rng(0).standard_normal((1, bench.WIDTH), dtype=np.float32)
    for name, run_pass, run_file in [("strip", sd.strip, strip_file),
                                     ("rewrite", sd.rewrite, rewrite_file)]:
        expected = run_pass(whole).model
        assert run_pass(path).model == expected, name  # placeholders filled
        # A LoadedModel's result keeps its placeholders; the opset converter gets the data
        # of those that are not main-graph initializers (here the Constant) in its child.
        kept = run_pass(modelio.load_model(path, skeleton=True)).model
        converted = name == "rewrite" and opset < 15
        assert len(list(skeleton.placeholder_tensors(kept))) == (3 if converted else 4), name
        out = tmp_path / f"{name}.onnx"
        run_file(path, out)
        written = onnx.load(out)
        assert written == expected, name  # weights copied from the source file
        assert weight_digests(written) == digests, name
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x})[0]
        reference = ort.InferenceSession(expected.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(got, reference.run(None, {"x": x})[0])


def test_no_pass_reads_a_placeholder_as_a_value(tmp_path: Path, small_skeletons: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor a placeholder (even the scalars): constants are unknown, never wrong."""
    monkeypatch.setattr(skeleton, "LARGE_BYTES", 0)
    path = tmp_path / "model.onnx"
    bench.build_model(path, 0.1)
    dropout, random_site = sd.inspect(path)
    assert (dropout.op_type, dropout.ratio, dropout.training_mode) == ("Dropout", None, "no")
    assert random_site.reason == "threshold 'ratio' is not a constant scalar"
    result = sd.strip(path)
    assert result.report.unconvertible == (random_site,) and result.report.folded == 1
    assert not modelio.holds_placeholders(result.model)
    assert weight_digests(result.model) == weight_digests(onnx.load(path))


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "models" / "onnx").glob("*.onnx"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_same_results_as_skeletons(path: Path, tmp_path: Path,
                                                  small_skeletons: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real exporter models with every tensor of more than 40 bytes a placeholder (their
    weights): the passes give the same reports and models (the rules read scalars and
    short shapes only)."""
    monkeypatch.setattr(skeleton, "LARGE_BYTES", 40)
    loaded = modelio.load_model(path, skeleton=True)
    assert modelio.holds_placeholders(loaded.model)
    whole = onnx.load(path)
    assert sd.inspect(loaded) == sd.inspect(whole)
    for name, run_pass, run_file in [("strip", sd.strip, strip_file),
                                     ("rewrite", sd.rewrite, rewrite_file)]:
        expected = run_pass(whole)
        got = run_pass(path)
        assert got.report == expected.report and got.model == expected.model, name
        out = tmp_path / f"{name}.onnx"
        run_file(path, out)
        assert onnx.load(out) == expected.model, name
