"""``spatialdrop-onnx rewrite | strip | inspect`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from passes_helpers import assert_no_dropout, assert_same, flag, full_check, parse, run, sample

from spatialdrop_onnx.cli import main

X = sample((2, 4, 3, 5))
MIXED = """<ir_version: 8, opset_import: ["": 18]>
    g (float[2,4,3,5] x) => (float[2,4,3,5] y, float[2,4,3,5] z)
      <float r = {0.25}, float s = {1.3333333333}, bool t = {1}> {
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        ms = Mul(m, s)
        a = Mul(x, ms)
        y = Dropout(a, r, t)
        n = RandomNormalLike(x)
        z = Add(x, n)
    }"""
CLEAN = """<ir_version: 8, opset_import: ["": 18]>
    g (float[2,4,3,5] x) => (float[2,4,3,5] y) <float r = {0.25}, bool t = {1}> {
        u = RandomUniform<shape = [2, 4, 1, 1]>()
        keep = GreaterOrEqual(u, r)
        m = Cast<to = 1>(keep)
        s = Constant<value = float {1.3333333333}>()
        ms = Mul(m, s)
        a = Mul(x, ms)
        y = Dropout(a, r, t)
    }"""


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.onnx"
    onnx.save(parse(MIXED), path)
    return path


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    path = tmp_path / "clean.onnx"
    onnx.save(parse(CLEAN), path)
    return path


def test_inspect_json(mixed: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(mixed), "--json"]) == 0
    sites = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in sites] == ["elementwise", "random-subgraph", "unconvertible"]
    for site in sites:
        assert {"name", "kind", "ratio", "shared_axes", "graph"} <= set(site)
        assert site["graph"] == "main"
    elementwise, spatial, other = sites
    assert elementwise["ratio"] == 0.25 and elementwise["shared_axes"] == []
    assert elementwise["training_mode"] == "true"
    assert spatial["shared_axes"] == [2, 3] and abs(spatial["ratio"] - 0.25) < 1e-6
    assert other["ratio"] is None and other["shared_axes"] is None and other["reason"]


def test_inspect_text(mixed: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(mixed)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith("random-subgraph")


def test_rewrite_then_strip(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rewritten.onnx"
    assert main(["rewrite", str(clean), "-o", str(out), "--training-default", "false"]) == 0
    assert "1 SpatialDropout" in capsys.readouterr().err
    rewritten = onnx.load(out)
    full_check(rewritten)
    default = next(i for i in rewritten.graph.initializer if i.name == "training_mode")
    assert onnx.numpy_helper.to_array(default).item() is False
    assert_same(run(rewritten, {"x": X}), [X])
    stripped_path = tmp_path / "stripped.onnx"
    assert main(["strip", str(out), "-o", str(stripped_path)]) == 0
    assert "folded 2 dropout site(s)" in capsys.readouterr().err
    stripped = onnx.load(stripped_path)
    full_check(stripped)
    assert_no_dropout(stripped)
    assert_same(run(stripped, {"x": X}), [X])


def test_rewrite_elementwise_spatial(clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "rewritten.onnx"
    assert main(["rewrite", str(clean), "-o", str(out), "--elementwise", "spatial"]) == 0
    rewritten = onnx.load(out)
    assert [n.op_type for n in rewritten.graph.node].count("SpatialDropout") == 2
    y = run(rewritten, {"x": X, "training_mode": flag(True)})[0]
    assert not np.array_equal(y, X)


def test_unconverted_sites_are_written_then_reported(mixed: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rewritten.onnx"
    assert main(["rewrite", str(mixed), "-o", str(out)]) == 5  # written, but partial
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spatialdrop-onnx: error: wrote")
    assert "n (main): no rule matches" in err[-1]
    assert out.exists()
    assert main(["strip", str(mixed), "-o", str(tmp_path / "s.onnx")]) == 5
    assert "left in place" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["strip", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")]) == 3
    assert capsys.readouterr().err.strip() == \
        f"spatialdrop-onnx: error: {tmp_path / 'nope.onnx'}: no such file"
    assert main(["rewrite", str(tmp_path / "nope.onnx")]) == 2  # -o missing
    assert "Missing option" in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12\x03abc\xff\xff")
    done = subprocess.run([sys.executable, "-m", "spatialdrop_onnx", "inspect", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "not a valid ONNX model" in done.stderr


def test_help_lists_the_graph_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("rewrite", "strip", "inspect"))
