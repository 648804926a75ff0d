"""Safe model I/O through the passes and the CLI: external-data validation (reliability
probes 1-3), atomic writes (probe 4), bad files (probe 7), and where the output's external
data lives. ``test_reliability_io.py`` has the exhaustive file-layer probes.

An audit hook (``modelio_cases``) records every file the process opens, so "nothing is
read" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelio_cases import OPENED, W, opened_besides
from modelio_cases import umask as _umask
from onnx import TensorProto
from onnx import helper as oh
from passes_helpers import run

import spatialdrop_onnx as sd
from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import RefusedError, UserError
from spatialdrop_onnx.passes import strip_file as strip_path


def _external(name: str, location: str, offset: str | None = "0",
              length: str | None = str(W.nbytes), extra: dict | None = None) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[12])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length, **(extra or {})}
    for key, value in entries.items():
        if value is not None:
            tensor.external_data.add(key=key, value=value)
    return tensor


def _model(tensor: TensorProto, where: str = "graph") -> onnx.ModelProto:
    """x + w → Dropout → y, with w's tensor placed in the graph, a Constant, a subgraph
    or a model-local function."""
    opsets = [oh.make_opsetid("", 18)]
    functions = []
    if where == "graph":
        nodes = [oh.make_node("Add", ["x", "w"], ["s"])]
        inits = [tensor]
    elif where == "constant":
        nodes = [oh.make_node("Constant", [], ["w"], value=tensor),
                 oh.make_node("Add", ["x", "w"], ["s"])]
        inits = []
    elif where == "subgraph":
        branch = oh.make_graph([oh.make_node("Add", ["x", "w"], ["b"])], "then", [],
                               [oh.make_tensor_value_info("b", TensorProto.FLOAT, [12])],
                               [tensor])
        other = oh.make_graph([oh.make_node("Identity", ["x"], ["c"])], "else", [],
                              [oh.make_tensor_value_info("c", TensorProto.FLOAT, [12])])
        nodes = [oh.make_node("Constant", [], ["cond"],
                              value=oh.make_tensor("cond", TensorProto.BOOL, [], [True])),
                 oh.make_node("If", ["cond"], ["s"], then_branch=branch, else_branch=other)]
        inits = []
    else:  # function
        body = [oh.make_node("Constant", [], ["w"], value=tensor),
                oh.make_node("Add", ["a", "w"], ["b"])]
        functions = [oh.make_function("local", "addw", ["a"], ["b"], body,
                                      [oh.make_opsetid("", 18)])]
        opsets.append(oh.make_opsetid("local", 1))
        nodes = [oh.make_node("addw", ["x"], ["s"], domain="local")]
        inits = []
    nodes.append(oh.make_node("Dropout", ["s"], ["y"]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [12])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [12])], inits)
    return oh.make_model(graph, opset_imports=opsets, functions=functions)


def _write(folder: Path, model: onnx.ModelProto, data: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if data:
        (folder / "w.bin").write_bytes(W.tobytes())
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _probe(tmp_path: Path, tensor: TensorProto, where: str = "graph",
           setup=None) -> str:  # noqa: ANN001
    """Run strip through the CLI entry point; return the one-line error."""
    from spatialdrop_onnx.cli import main

    folder = tmp_path / "m"
    path = _write(folder, _model(tensor, where))
    if setup is not None:
        setup(folder)
    OPENED.clear()
    with pytest.raises(UserError) as caught:
        strip_path(path, tmp_path / "out.onnx")
    opened = opened_besides(path)
    assert not opened, f"files opened: {opened}"
    assert not (tmp_path / "out.onnx").exists()
    assert main(["strip", str(path), "-o", str(tmp_path / "out.onnx")]) != 0
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- Probes 1-3: external-data locations, offsets, keys, in every place a tensor lives ---

LOCATIONS = {
    "parent_escape": "../../x",
    "inner_escape": "a/../../x",
    "absolute": "/etc/hostname",
    "backslash_escape": "..\\..\\x",
}
REASONS = ("leaves the model folder", "is absolute", "contains a backslash")


@pytest.mark.parametrize("where", ["graph", "constant", "subgraph", "function"])
@pytest.mark.parametrize("case", sorted(LOCATIONS))
def test_location_outside_the_folder_is_refused(tmp_path: Path, case: str, where: str) -> None:
    message = _probe(tmp_path, _external("weights_w", LOCATIONS[case]), where)
    assert "'weights_w'" in message
    assert any(reason in message for reason in REASONS)


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(W.tobytes())

    def plant(folder: Path) -> None:
        (folder / "link.bin").symlink_to(outside)

    message = _probe(tmp_path, _external("w", "link.bin"), setup=plant)
    assert "symlink" in message and "'w'" in message


@pytest.mark.parametrize("where", ["graph", "function"])
def test_symlinked_parent_folder_is_refused(tmp_path: Path, where: str) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.bin").write_bytes(W.tobytes())

    def plant(folder: Path) -> None:
        (folder / "sub").symlink_to(outside, target_is_directory=True)

    assert "symlink" in _probe(tmp_path, _external("w", "sub/w.bin"), where, setup=plant)


def test_hard_linked_file_is_refused(tmp_path: Path) -> None:
    def plant(folder: Path) -> None:
        os.link(folder / "w.bin", tmp_path / "second_name.bin")

    assert "2 hard links" in _probe(tmp_path, _external("w", "w.bin"), setup=plant)


@pytest.mark.parametrize("where", ["graph", "constant", "subgraph", "function"])
@pytest.mark.parametrize("offset,length,extra,reason", [
    ("-1", "48", None, "not a non-negative decimal integer"),
    ("abc", "48", None, "not a non-negative decimal integer"),
    ("0", "0x30", None, "not a non-negative decimal integer"),
    ("99999999999999999999", "48", None, "is too large"),
    ("0", "99999999999", None, "beyond the end"),
    ("40", "48", None, "beyond the end"),
    ("0", "48", {"sneaky": "1"}, "key 'sneaky' is not allowed"),
    ("0", "48", {"basepath": "/"}, "key 'basepath' is not allowed"),
])
def test_bad_offset_length_or_key(tmp_path: Path, where: str, offset: str, length: str,
                                  extra: dict | None, reason: str) -> None:
    message = _probe(tmp_path, _external("w", "w.bin", offset, length, extra), where)
    assert reason in message and "'w'" in message


def test_missing_data_file_and_missing_location(tmp_path: Path) -> None:
    assert "does not exist" in _probe(tmp_path, _external("w", "nope.bin"))
    tensor = _external("w", "w.bin")
    del tensor.external_data[0]
    assert "has no location" in _probe(tmp_path / "c", tensor)


# --- Valid external data: never read, referenced or copied ----------------------------


def test_valid_external_data_is_referenced_in_the_same_folder(tmp_path: Path) -> None:
    path = _write(tmp_path, _model(_external("w", "w.bin")))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    OPENED.clear()
    strip_path(path, tmp_path / "stripped.onnx")
    assert not [p for p in OPENED if p.endswith("w.bin")], "weights were read"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    out = onnx.load(tmp_path / "stripped.onnx", load_external_data=False)
    assert [e.value for e in out.graph.initializer[0].external_data][0] == "w.bin"
    onnx.checker.check_model(tmp_path / "stripped.onnx", full_check=True)
    x = np.ones(12, np.float32)
    loaded = onnx.load(tmp_path / "stripped.onnx")
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], x + W)


def test_valid_external_data_is_copied_to_another_folder(tmp_path: Path) -> None:
    path = _write(tmp_path / "in", _model(_external("w", "w.bin")))
    (tmp_path / "out").mkdir()
    strip_path(path, tmp_path / "out" / "model.onnx")
    [copied] = modelio.load_model(tmp_path / "out" / "model.onnx").data_files
    assert copied.path.read_bytes() == W.tobytes()
    assert modelio.data_file_pattern("model.onnx").fullmatch(copied.location)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.onnx", copied.location]
    onnx.checker.check_model(tmp_path / "out" / "model.onnx", full_check=True)
    x = np.ones(12, np.float32)
    loaded = onnx.load(tmp_path / "out" / "model.onnx")
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], x + W)


# --- Probe 4: atomic writes -------------------------------------------------------------


def test_symlink_at_output_is_replaced_not_followed(tmp_path: Path) -> None:
    path = _write(tmp_path, _model(_external("w", "w.bin")))
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "out.onnx"
    out.symlink_to(victim)
    strip_path(path, out)
    assert not out.is_symlink() and victim.read_text() == "do not touch"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    onnx.checker.check_model(out, full_check=True)


def test_interrupted_write_leaves_no_partial_output(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, _model(_external("w", "w.bin")))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    before = path.read_bytes()

    def killed(fd: int) -> None:
        raise KeyboardInterrupt  # as if the process died between write and rename

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        strip_path(path, out)
    monkeypatch.undo()
    assert out.read_bytes() == b"previous output"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx", "w.bin"]


def test_output_over_the_input_is_refused_unless_in_place(tmp_path: Path) -> None:
    from spatialdrop_onnx.cli import main

    path = _write(tmp_path, _model(_external("w", "w.bin")))
    before = path.read_bytes()
    with pytest.raises(RefusedError, match="is the input model"):
        strip_path(path, tmp_path / "." / "model.onnx")
    assert main(["strip", str(path), "-o", str(path)]) != 0
    assert path.read_bytes() == before
    loaded = modelio.load_model(path)
    stripped = sd.strip(loaded.model).model
    modelio.save_model(stripped, path, source=loaded, in_place=True)
    assert sd.inspect(modelio.load_model(path).model) == []


# --- Probe 7: bad files -------------------------------------------------------------------

def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = oh.make_model(oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])], "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[oh.make_opsetid("", 18)]).SerializeToString()
    files = {
        "missing": tmp_path / "missing.onnx",
        "empty": tmp_path / "empty.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "directory": tmp_path / "folder.onnx",
        "not_onnx": tmp_path / "text.onnx",
        "future_ir": tmp_path / "ir.onnx",
        "future_opset": tmp_path / "opset.onnx",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["directory"].mkdir()
    files["not_onnx"].write_text("this is not a model\n" * 10)
    model = onnx.ModelProto.FromString(good)
    model.ir_version = 99
    files["future_ir"].write_bytes(model.SerializeToString())
    model = onnx.ModelProto.FromString(good)
    model.opset_import[0].version = 99
    files["future_opset"].write_bytes(model.SerializeToString())
    return files


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "directory", "not_onnx",
                                  "future_ir", "future_opset"])
def test_bad_input_files(tmp_path: Path, case: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(UserError) as caught:
        modelio.load_model(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
