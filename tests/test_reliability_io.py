"""Issue 9, file layer: hostile external data, hostile output paths, faults while writing.

Reliability notes items 1-4, 7, 11-14, 16 and 19. Reading probes check the
refusal, that the tensor and its place are named in one line, and (audit
hook) that no file but the model itself was opened. Writing probes check
what is on disk afterwards, byte for byte. The fault-injection and
concurrency tests run real processes and real signals.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelio_cases import (
    OPENED,
    PLACES,
    W,
    external,
    opened_besides,
    place,
    write_model,
)
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import RefusedError, UserError
from spatialdrop_onnx.modelio import _fs, writing
from spatialdrop_onnx.modelio import external as external_module

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


@contextlib.contextmanager
def no_hang(seconds: float = 10) -> Iterator[None]:
    """Turn a blocking call (a FIFO opened for reading) into a test failure."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(path: Path, error: type[Exception] = UserError) -> str:
    """load_model's one-line error for ``path``; nothing but the model file was opened."""
    OPENED.clear()
    with no_hang(), pytest.raises(error) as caught:
        modelio.load_model(path)
    assert not opened_besides(path), opened_besides(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _crafted_model(tensor: TensorProto, data_location: bytes) -> bytes:
    """Model bytes whose one initializer ends with the raw ``data_location`` field bytes."""
    tensor_bytes = tensor.SerializeToString() + data_location
    model = place(external("unused", "w.bin"), "graph")
    del model.graph.initializer[:]
    graph_bytes = model.graph.SerializeToString() + b"\x2a" + _varint(len(tensor_bytes)) \
        + tensor_bytes
    model.ClearField("graph")
    return model.SerializeToString() + b"\x3a" + _varint(len(graph_bytes)) + graph_bytes


def _plain_tensor(name: str, location: str) -> TensorProto:
    """``external()`` without ``data_location`` (left for the crafted bytes)."""
    tensor = external(name, location)
    tensor.ClearField("data_location")
    return tensor


# --- Item 11: the byte-pattern shortcut is gone ---------------------------------------


def test_non_minimal_varint_data_location_is_still_validated(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    data = _crafted_model(_plain_tensor("stolen", "../secret.bin"), b"\x70\x81\x00")
    assert b"\x70\x01" not in data  # the old shortcut would have skipped validation
    parsed = onnx.ModelProto.FromString(data).graph.initializer[0]
    assert parsed.data_location == TensorProto.EXTERNAL  # protobuf accepts the varint
    path = folder / "model.onnx"
    path.write_bytes(data)
    message = refused(path, RefusedError)
    assert "'stolen'" in message and "leaves the model folder" in message


def test_external_data_entries_count_even_with_default_location(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(_crafted_model(_plain_tensor("w", "../secret.bin"), b"\x70\x00"))
    assert "leaves the model folder" in refused(path, RefusedError)


@pytest.mark.parametrize("raw", [b"\x70\x05", b"\x70\x85\x00", b"\x72\x01\x01"],
                         ids=["value_5", "value_5_non_minimal", "wrong_wire_type"])
def test_unknown_data_location_value_is_refused(tmp_path: Path, raw: bytes) -> None:
    for with_location in (True, False):
        folder = tmp_path / str(with_location)
        write_model(folder, place(external("unused", "w.bin"), "graph"))
        tensor = _plain_tensor("w", "w.bin")
        if not with_location:
            del tensor.external_data[:]
        path = folder / "model.onnx"
        path.write_bytes(_crafted_model(tensor, raw))
        assert "data_location has a value this tool does not know" in refused(path,
                                                                                RefusedError)


# --- Items 1, 3, 19: locations, in every place a tensor can sit -----------------------

BAD_LOCATIONS = {
    "parent": ("../../x", "leaves the model folder"),
    "inner_parent": ("a/../../x", "leaves the model folder"),
    "dot_parent": ("./..", "leaves the model folder"),
    "absolute": ("/etc/hostname", "is absolute"),
    "backslash": ("..\\..\\x", "contains a backslash"),
    "drive": ("C:/x", "starts with a drive letter"),
    "empty": ("", "is empty"),
    "nul": ("w.bin\x00.txt", "contains a NUL character"),
    "only_dots": ("./.", "names no file"),
}


@pytest.mark.parametrize("where", sorted(PLACES))
@pytest.mark.parametrize("case", sorted(BAD_LOCATIONS))
def test_bad_location_is_refused_everywhere(tmp_path: Path, case: str, where: str) -> None:
    location, reason = BAD_LOCATIONS[case]
    path = write_model(tmp_path / "m", place(external("w\n\x1b[31m", location), where))
    message = refused(path, RefusedError)
    assert reason in message and PLACES[where] in message, message
    assert "'w\\n\\x1b[31m'" in message  # the tensor name, escaped


def _symlinked_file(folder: Path) -> str:
    (folder.parent / "outside.bin").write_bytes(W.tobytes())
    (folder / "link.bin").symlink_to(folder.parent / "outside.bin")
    return "link.bin"


def _symlinked_folder(folder: Path) -> str:
    (folder.parent / "elsewhere").mkdir()
    (folder.parent / "elsewhere" / "w.bin").write_bytes(W.tobytes())
    (folder / "sub").symlink_to(folder.parent / "elsewhere", target_is_directory=True)
    return "sub/w.bin"


def _hard_link(folder: Path) -> str:
    os.link(folder / "w.bin", folder.parent / "second_name.bin")
    return "w.bin"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.bin")
    return "pipe.bin"


def _directory(folder: Path) -> str:
    (folder / "dir.bin").mkdir()
    return "dir.bin"


def _through_file(folder: Path) -> str:
    return "w.bin/w.bin"


FILE_CASES = {
    "symlinked_file": (_symlinked_file, "goes through a symlink (link.bin)", RefusedError),
    "symlinked_folder": (_symlinked_folder, "goes through a symlink (sub)", RefusedError),
    "hard_link": (_hard_link, "is a file with 2 hard links", RefusedError),
    "fifo": (_fifo, "is a FIFO, not a regular file", RefusedError),
    "directory": (_directory, "is a directory, not a regular file", RefusedError),
    "through_a_file": (_through_file, "is not a path through folders", RefusedError),
    "missing": (lambda folder: "nope.bin", "does not exist", UserError),
}


@pytest.mark.parametrize("where", sorted(PLACES))
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unsafe_data_file_is_refused_everywhere(tmp_path: Path, case: str, where: str) -> None:
    setup, reason, error = FILE_CASES[case]
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(W.tobytes())
    location = setup(folder)
    path = write_model(folder, place(external("w", location), where), data=None)
    message = refused(path, error)
    assert reason in message and "'w'" in message and PLACES[where] in message, message


@pytest.mark.parametrize("where", sorted(PLACES))
def test_valid_reference_is_found_everywhere(tmp_path: Path, where: str) -> None:
    """The positive control: the walk reaches every place (validated and reported)."""
    path = write_model(tmp_path, place(external("w", "./w.bin"), where))
    OPENED.clear()
    loaded = modelio.load_model(path)
    assert not opened_besides(path)
    assert [(f.location, f.path, f.size) for f in loaded.data_files] == [
        ("./w.bin", tmp_path / "w.bin", W.nbytes)]
    labels = [label for tensor, label in modelio.iter_tensors(loaded.model)
              if tensor.name == "w"]
    assert len(labels) == 1 and PLACES[where] in labels[0]


# --- Items 2, 3, 19: offset, length and keys --------------------------------------------

NUMBER_CASES = {
    "negative_offset": ("-1", "48", [], "offset '-1' is not a non-negative decimal integer"),
    "plus_sign": ("+0", "48", [], "offset '+0' is not"),
    "leading_space": (" 0", "48", [], "offset ' 0' is not"),
    "trailing_newline": ("0\n", "48", [], "offset '0\\n' is not"),
    "hex_length": ("0", "0x30", [], "length '0x30' is not"),
    "exponent": ("0", "4.8e1", [], "length '4.8e1' is not"),
    "arabic_digit": ("\u0661", "48", [], "is not a non-negative decimal integer"),
    "empty_length": ("0", "", [], "length '' is not"),
    "negative_length": ("0", "-48", [], "length '-48' is not"),
    "huge_offset": ("99999999999999999999", "48", [], "offset '99999999999999999999' is too"),
    "enormous_length": ("0", "9" * 100_000, [], "is too large"),
    "just_above_int64": ("9223372036854775808", "48", [], "is too large"),
    "length_beyond": ("0", "52", [], "offset 0 + length 52 is beyond the end"),
    "range_beyond": ("40", "48", [], "offset 40 + length 48 is beyond the end"),
    "offset_beyond": ("49", None, [], "offset 49 is beyond the end of 'w.bin' (48 bytes)"),
    "unknown_key": ("0", "48", [("sneaky", "1")], "key 'sneaky' is not allowed"),
    "basepath": ("0", "48", [("basepath", "/")], "key 'basepath' is not allowed"),
    "repeated_location": ("0", "48", [("location", "../x")], "key 'location' is repeated"),
    "repeated_offset": ("0", "48", [("offset", "4")], "key 'offset' is repeated"),
}
NUMBER_PLACES = ["graph", "constant", "if_body", "loop_body", "function", "mismatched_type_t",
                 "training_initialization"]


@pytest.mark.parametrize("where", NUMBER_PLACES)
@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
def test_bad_offset_length_or_key_is_refused(tmp_path: Path, case: str, where: str) -> None:
    offset, length, extra, reason = NUMBER_CASES[case]
    path = write_model(tmp_path, place(external("w", "w.bin", offset, length, extra), where))
    started = time.perf_counter()
    message = refused(path, RefusedError)
    assert time.perf_counter() - started < 1.0
    assert reason in message and PLACES[where] in message, message


def test_missing_location_is_refused(tmp_path: Path) -> None:
    tensor = external("w", "w.bin")
    del tensor.external_data[0]
    path = write_model(tmp_path, place(tensor, "function_default"))
    assert "has no location" in refused(path, RefusedError)


@pytest.mark.parametrize("offset,length", [("0", None), ("8", "40"), ("48", "0"), ("0", "48")])
def test_valid_offsets_pass(tmp_path: Path, offset: str, length: str | None) -> None:
    path = write_model(tmp_path, place(external("w", "w.bin", offset, length), "constant"))
    assert modelio.load_model(path).data_files[0].size == W.nbytes


# --- Item 12: nothing resolved against the working directory, nothing blocks -------------

_CWD_CHILD = """
import json, sys
from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import UserError
result = {}
try:
    modelio.load_model(sys.argv[1])
    result["missing"] = "loaded"
except UserError as err:
    result["missing"] = str(err)
loaded = modelio.load_model(sys.argv[2])
tensor = loaded.model.graph.initializer[0]
result["read"] = modelio.read_external_bytes(tensor, loaded.folder, 1024).hex()
print(json.dumps(result))
"""


def test_nothing_is_resolved_against_the_working_directory(tmp_path: Path) -> None:
    """A FIFO named like the data file sits in the cwd: opening it would block forever."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    os.mkfifo(cwd / "w.bin")
    missing = write_model(tmp_path / "missing", place(external("w", "w.bin"), "graph"),
                          data=None)
    present = write_model(tmp_path / "present", place(external("w", "w.bin"), "graph"))
    done = subprocess.run([sys.executable, "-c", _CWD_CHILD, str(missing), str(present)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "location 'w.bin' does not exist" in result["missing"]
    assert bytes.fromhex(result["read"]) == W.tobytes()


# --- read_external_bytes ------------------------------------------------------------------


def _loaded(folder: Path, tensor: TensorProto | None = None) -> modelio.LoadedModel:
    return modelio.load_model(write_model(folder, place(tensor or external("w", "w.bin", "8",
                                                                          "16"), "graph")))


def test_read_external_bytes_reads_the_declared_range(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    tensor = loaded.model.graph.initializer[0]
    OPENED.clear()
    assert modelio.read_external_bytes(tensor, loaded.folder, 16) == W.tobytes()[8:24]
    # the model folder (a directory descriptor), then w.bin in it (O_PATH, /proc/self/fd)
    assert opened_besides() == [str(loaded.folder), "w.bin"]


def test_read_external_bytes_refuses_a_long_tensor_before_opening(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    OPENED.clear()
    with pytest.raises(RefusedError, match="length 16 is more than the 15 bytes"):
        modelio.read_external_bytes(loaded.model.graph.initializer[0], loaded.folder, 15)
    assert not opened_besides()


def test_read_external_bytes_refuses_a_plain_tensor(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not stored as external data"):
        modelio.read_external_bytes(oh.make_tensor("c", TensorProto.FLOAT, [1], [1.0]),
                                    tmp_path, 16)


@pytest.mark.parametrize("swap", ["fifo", "symlink", "hard_link", "shorter"])
def test_read_external_bytes_validates_again(tmp_path: Path, swap: str) -> None:
    loaded = _loaded(tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    (tmp_path / "other.bin").write_bytes(W.tobytes())
    data.unlink()
    if swap == "fifo":
        os.mkfifo(data)
    elif swap == "symlink":
        data.symlink_to(tmp_path / "other.bin")
    elif swap == "hard_link":
        os.link(tmp_path / "other.bin", data)
    else:
        data.write_bytes(W.tobytes()[:20])
    with no_hang(), pytest.raises(UserError) as caught:
        modelio.read_external_bytes(loaded.model.graph.initializer[0], loaded.folder, 64)
    assert "'w'" in str(caught.value)


@pytest.mark.parametrize("swap", ["fifo", "other_file", "symlink"])
def test_read_external_bytes_checks_what_it_opened(tmp_path: Path, swap: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: the file is swapped between validation and open."""
    loaded = _loaded(tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    stale = loaded.data_files[0]
    monkeypatch.setattr(external_module, "_inspect", lambda folder, location: stale)
    replacement = tmp_path / "m" / "replacement"
    if swap == "fifo":
        os.mkfifo(replacement)
    elif swap == "symlink":
        replacement.symlink_to(tmp_path / "m" / "model.onnx")
    else:
        replacement.write_bytes(W.tobytes())  # created while the old inode is still in use
    os.replace(replacement, data)
    with no_hang(), pytest.raises(RefusedError) as caught:
        modelio.read_external_bytes(loaded.model.graph.initializer[0], loaded.folder, 64)
    expected = {"fifo": "became a FIFO", "symlink": "became a symlink",
                "other_file": "was replaced after it was validated"}[swap]
    assert expected in str(caught.value)


def test_open_regular_never_blocks_or_follows(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with no_hang():
        for name, follow in (("fifo", False), ("link", False), ("link", True)):
            with pytest.raises(_fs.NotRegular):
                _fs.open_regular(tmp_path / name, follow=follow)


# --- Items 7 and 16: the model path itself --------------------------------------------


def _good_model_bytes() -> bytes:
    return place(oh.make_tensor("w", TensorProto.FLOAT, [1], [1.0]), "graph").SerializeToString()


def _special_file(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with _chdir(folder):
            server = socket.socket(socket.AF_UNIX)
            server.bind(path.name)
            server.close()
    elif kind == "device":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    elif kind == "directory":
        path.mkdir()
    return path


@contextlib.contextmanager
def _chdir(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _can_mknod(folder: Path) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        os.mknod(folder / "probe", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def _special_kinds(folder: Path) -> list[str]:
    """FIFO and socket always; a character device when this process may create one."""
    return ["fifo", "socket", *(["device"] if _can_mknod(folder) else [])]


def test_model_path_must_be_a_regular_file(tmp_path: Path) -> None:
    kinds = _special_kinds(tmp_path)
    reasons = {"fifo": "is a FIFO", "socket": "is a socket", "device": "is a character device"}
    for kind in kinds:
        path = _special_file(tmp_path, kind)
        assert f"{reasons[kind]}, not a regular file" in refused(path)
        link = tmp_path / f"link-to-{kind}.onnx"
        link.symlink_to(path)
        assert reasons[kind] in refused(link)
    assert "is a directory" in refused(_special_file(tmp_path, "directory"))


def test_symlink_as_model_path_is_fine(tmp_path: Path) -> None:
    path = write_model(tmp_path / "real", place(external("w", "w.bin"), "graph"))
    link = tmp_path / "real" / "link.onnx"
    link.symlink_to(path)
    loaded = modelio.load_model(link)
    assert loaded.path == link and loaded.inode == path.stat().st_ino
    assert loaded.data_files[0].path == tmp_path / "real" / "w.bin"
    # data is resolved next to the path given, as onnx and onnxruntime do
    (tmp_path / "elsewhere.onnx").symlink_to(path)
    assert "location 'w.bin' does not exist" in refused(tmp_path / "elsewhere.onnx")


def test_empty_and_broken_models(tmp_path: Path) -> None:
    good = _good_model_bytes()
    cases = {
        "empty": (b"", "file is empty"),
        "truncated": (good[: len(good) // 2], "not a valid ONNX model (DecodeError)"),
        "text": (b"this is not a model\n" * 10, "not a valid ONNX model"),
        "no_graph": (onnx.ModelProto(ir_version=8).SerializeToString(), "no graph or opset"),
    }
    model = onnx.ModelProto.FromString(good)
    model.ir_version = 99
    cases["future_ir"] = (model.SerializeToString(), "IR version 99 is not supported")
    model = onnx.ModelProto.FromString(good)
    model.opset_import[0].version = 99
    cases["future_opset"] = (model.SerializeToString(), "default-domain opset 99")
    for name, (data, reason) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        assert reason in refused(path), name


_SIZE_CHILD = """
import json, sys, time
from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import UserError
started = time.perf_counter()
try:
    modelio.load_model(sys.argv[1])
    message = "loaded"
except UserError as err:
    message = str(err)
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"message": message, "seconds": time.perf_counter() - started,
                  "peak_mb": peak / 1024}))
"""


def test_oversized_model_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:
        handle.truncate(modelio.MAX_MODEL_BYTES + 1)  # a hole: no disk used
    done = subprocess.run([sys.executable, "-c", _SIZE_CHILD, str(path)], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "2147483648 bytes is more than protobuf can parse" in result["message"]
    assert "external data" in result["message"] and "\n" not in result["message"]
    assert result["seconds"] < 1 and result["peak_mb"] < 400, result


# --- Item 13: what -o may name ---------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: kind, size, inode and content hash of regular files."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                  if stat.S_ISREG(info.st_mode) else os.readlink(path)
                  if stat.S_ISLNK(info.st_mode) else "")
        found[str(path.relative_to(folder))] = (stat.S_IFMT(info.st_mode), info.st_size,
                                                 info.st_ino, info.st_rdev, digest)
    return found


@pytest.fixture
def source(tmp_path: Path) -> modelio.LoadedModel:
    return modelio.load_model(write_model(tmp_path / "in", place(external("w", "w.bin"),
                                                                   "graph"), name="a.onnx"))


def _refused_output(target: str | Path, source: modelio.LoadedModel, root: Path,
                    error: type[Exception], in_place: bool = False) -> str:
    """save_model and check_output_path refuse ``target`` alike and change nothing."""
    before = _files(root)
    with pytest.raises(error) as early:
        modelio.check_output_path(target, source, in_place)
    with pytest.raises(error) as late:
        modelio.save_model(source.model, target, source=source, in_place=in_place)
    assert str(early.value) == str(late.value)
    assert _files(root) == before
    message = str(late.value)
    assert "\n" not in message and ".spatialdrop-" not in message.replace(str(target), "")
    return message


def test_special_files_at_the_output_are_never_replaced(tmp_path: Path,
                                                        source: modelio.LoadedModel) -> None:
    """-o naming a FIFO, a socket or (as root) a character device like /dev/null."""
    out = tmp_path / "out"
    out.mkdir()
    reasons = {"fifo": "is a FIFO", "socket": "is a socket", "device": "is a character device"}
    for kind in _special_kinds(out):
        path = _special_file(out, kind)
        message = _refused_output(path, source, tmp_path, RefusedError)
        assert f"{path}: {reasons[kind]}; only regular files are replaced" == message
        # a symlink to it is replaced itself; the special file stays what it was
        link = out / f"link-to-{kind}.onnx"
        link.symlink_to(path)
        before = path.lstat()
        modelio.save_model(source.model, link, source=source)
        assert stat.S_ISREG(link.lstat().st_mode) and modelio.load_model(link).data_files
        after = path.lstat()
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino,
                                                                before.st_rdev)
    assert "is a directory" in _refused_output(_special_file(out, "directory"), source,
                                               tmp_path, UserError)


def _spellings(tmp_path: Path, name: str) -> list[str]:
    (tmp_path / "via").symlink_to(tmp_path / "in", target_is_directory=True)
    return [name, f"./{name}", str(tmp_path / "in" / name), str(tmp_path / "via" / name),
            str(tmp_path / "in" / ".." / "in" / name)]


def test_output_equal_to_the_input_is_refused(tmp_path: Path, source: modelio.LoadedModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "in")
    os.link(tmp_path / "in" / "a.onnx", tmp_path / "in" / "hard.onnx")
    (tmp_path / "in" / "soft.onnx").symlink_to(tmp_path / "in" / "a.onnx")
    for target in [*_spellings(tmp_path, "a.onnx"), "hard.onnx", "soft.onnx"]:
        message = _refused_output(target, source, tmp_path, RefusedError)
        assert message == (f"{target}: is the input model {tmp_path / 'in' / 'a.onnx'}; "
                           "use --in-place to replace it")


def test_output_equal_to_a_data_file_is_refused_even_in_place(
        tmp_path: Path, source: modelio.LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "in")
    for target in _spellings(tmp_path, "w.bin"):
        for in_place in (False, True):
            message = _refused_output(target, source, tmp_path, RefusedError, in_place)
            assert "is the external data file 'w.bin' of the input" in message


def test_in_place_replaces_the_input_atomically(tmp_path: Path,
                                                source: modelio.LoadedModel) -> None:
    path = tmp_path / "in" / "a.onnx"
    os.chmod(path, 0o640)
    weights = _files(tmp_path / "in")["w.bin"]
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    model.graph.name = "replaced"
    modelio.save_model(model, path, source=source, in_place=True)
    after = modelio.load_model(path)
    assert after.model.graph.name == "replaced"
    assert after.inode != source.inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _files(tmp_path / "in")["w.bin"] == weights
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.onnx", "w.bin"]


def test_missing_folder_and_file_as_folder(tmp_path: Path,
                                         source: modelio.LoadedModel) -> None:
    message = _refused_output(tmp_path / "nowhere" / "o.onnx", source, tmp_path, UserError)
    assert "does not exist" in message
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _refused_output(tmp_path / "file" / "o.onnx", source,
                                                tmp_path, UserError)


# --- Item 14: data files, permissions, collisions ----------------------------------------


def _data_names(folder: Path, target: str = "out.onnx") -> list[str]:
    pattern = modelio.data_file_pattern(target)
    return sorted(p.name for p in folder.iterdir() if pattern.fullmatch(p.name))


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_copied_data_keeps_the_source_permission_bits(tmp_path: Path, mode: int) -> None:
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    os.chmod(tmp_path / "in" / "w.bin", mode)
    (tmp_path / "out").mkdir()
    _save(path, tmp_path / "out" / "out.onnx")
    [name] = _data_names(tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == mode


def _args(path: Path, target: Path) -> tuple:
    loaded = modelio.load_model(path)
    return loaded.model, target, loaded


def _save(path: Path, target: Path) -> None:
    """Load ``path`` and save it to ``target``."""
    loaded = modelio.load_model(path)
    modelio.save_model(loaded.model, target, source=loaded)


def test_model_file_mode_new_and_replaced(tmp_path: Path) -> None:
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    target = tmp_path / "out.onnx"
    old = os.umask(0o027)
    try:
        model, _, loaded = _args(path, target)
        modelio.save_model(model, target, source=loaded)
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        os.chmod(target, 0o600)
        modelio.save_model(model, target, source=loaded)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_copies_never_overwrite_other_files(tmp_path: Path) -> None:
    """Another model's w.bin and a look-alike data file in the output folder survive."""
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    out = tmp_path / "out"
    write_model(out, place(external("w", "w.bin"), "graph"), data=b"\x07" * 48,
                name="other.onnx")
    lookalike = out / "out.onnx.0123456789abcdef-0.data"  # not referenced by any out.onnx
    lookalike.write_bytes(b"someone else's")
    before = _files(out)
    model = modelio.load_model(path)
    original = model.model.SerializeToString()
    modelio.save_model(model.model, out / "out.onnx", source=model)
    assert model.model.SerializeToString() == original  # the caller's proto is untouched
    after = _files(out)
    assert {k: v for k, v in after.items() if k in before} == before
    saved = modelio.load_model(out / "out.onnx")
    [file] = saved.data_files
    assert file.location not in before and file.path.read_bytes() == W.tobytes()
    other = modelio.load_model(out / "other.onnx")
    assert other.data_files[0].path.read_bytes() == b"\x07" * 48


def test_publishing_never_overwrites_an_existing_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Data names are random; if one is taken anyway (planted), the save refuses."""
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(writing.secrets, "token_hex", lambda n: "f" * 2 * n)
    planted = out / f"out.onnx.{'f' * 16}-0.data"
    planted.write_bytes(b"planted")
    with pytest.raises(RefusedError, match="is already in the output folder; it was not "
                                           "overwritten"):
        _save(path, out / "out.onnx")
    assert sorted(p.name for p in out.iterdir()) == [planted.name]
    assert planted.read_bytes() == b"planted"


def test_two_outputs_in_one_folder_own_their_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, fill in (("a.onnx", 1), ("b.onnx", 2)):
        path = write_model(tmp_path / f"src{fill}", place(external("w", "w.bin"), "graph"),
                           data=bytes([fill]) * 48)
        _save(path, out / name)
    for name, fill in (("a.onnx", 1), ("b.onnx", 2)):
        [file] = modelio.load_model(out / name).data_files
        assert file.path.read_bytes() == bytes([fill]) * 48
    # c.onnx saved beside b.onnx refers to b's data file; replacing b.onnx later never
    # removes a data file, so c.onnx keeps its weights
    _save(out / "b.onnx", out / "c.onnx")
    _save(out / "a.onnx", out / "b.onnx")
    [file] = modelio.load_model(out / "c.onnx").data_files
    assert file.path.read_bytes() == bytes([2]) * 48


def test_replacing_an_output_keeps_the_old_data_files(tmp_path: Path) -> None:
    """Dropped guarantee: the previous output's data files stay (nothing is read to tell
    whose they are); each save has its own, and a reader of the old model still finds them."""
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    out = tmp_path / "out"
    out.mkdir()
    _save(path, out / "out.onnx")
    old = modelio.load_model(out / "out.onnx")
    [first] = _data_names(out)
    _save(path, out / "out.onnx")
    assert first in _data_names(out) and len(_data_names(out)) == 2
    assert modelio.read_external_bytes(old.model.graph.initializer[0], old.folder,
                                       64) == W.tobytes()
    [second] = modelio.load_model(out / "out.onnx").data_files
    assert second.location != first


def test_same_folder_references_are_kept(tmp_path: Path) -> None:
    path = write_model(tmp_path, place(external("w", "w.bin"), "graph"))
    OPENED.clear()
    _save(path, tmp_path / "out.onnx")
    assert not [p for p in OPENED if p.endswith("w.bin")], "weights were opened"
    assert [f.location for f in modelio.load_model(tmp_path / "out.onnx").data_files] == [
        "w.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx", "w.bin"]


def test_data_file_changed_after_loading_is_not_copied(tmp_path: Path) -> None:
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    model, target, loaded = _args(path, tmp_path / "out.onnx")
    (tmp_path / "in" / "new.bin").write_bytes(b"\x09" * 48)  # same size, another inode
    os.replace(tmp_path / "in" / "new.bin", tmp_path / "in" / "w.bin")
    with pytest.raises(UserError, match="changed while it was processed"):
        modelio.save_model(model, target, source=loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_sparse_copy_keeps_holes(tmp_path: Path) -> None:
    size = 1 << 30
    with open(tmp_path / "sparse.bin", "wb") as handle:
        handle.truncate(size)
        handle.seek(123456)
        handle.write(b"payload")
    tensor = external("w", "sparse.bin", "0", str(size))
    path = write_model(tmp_path / "in", place(tensor, "graph"), data=None)
    shutil.move(tmp_path / "sparse.bin", tmp_path / "in" / "sparse.bin")
    _save(path, tmp_path / "out.onnx")
    [name] = _data_names(tmp_path)
    copy = tmp_path / name
    assert copy.stat().st_size == size and copy.stat().st_blocks * 512 < (1 << 24)
    with open(copy, "rb") as handle:
        handle.seek(123456)
        assert handle.read(7) == b"payload"


# --- Item 14: failures leave nothing behind -----------------------------------------------

#: Where a fault strikes: the second data copy (the first file complete, the second created),
#: writing the model's temp file, its fsync, the rename, and right after the rename.
STEPS = ["second_copy", "model_write", "model_fsync", "replace", "after_replace"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit,
                                   OSError(errno.ENOSPC, "No space left on device")],
                         ids=["KeyboardInterrupt", "SystemExit", "ENOSPC"])
@pytest.mark.parametrize("step", STEPS)
def test_failure_at_any_step_leaves_nothing_behind(tmp_path: Path, step: str,
                                                   error: BaseException,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    path = write_model(src, place(external("w", "w.bin"), "graph"))
    (src / "v.bin").write_bytes(b"\x05" * 48)
    model = place(external("w", "w.bin"), "graph")
    model.graph.initializer.append(external("v", "v.bin"))
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "out"
    out.mkdir()
    model, target, loaded = _args(path, out / "out.onnx")
    modelio.save_model(model, target, source=loaded)  # a previous output, to be kept
    before, inputs = _files(out), _files(src)
    calls: list[str] = []

    def failing(name: str, real: object, at_call: int = 1, after: bool = False) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls.append(name)
            if calls.count(name) != at_call:
                return real(*args, **kwargs)  # type: ignore[operator]
            if after:
                real(*args, **kwargs)  # type: ignore[operator]
            raise error
        return wrapper

    if step == "second_copy":
        monkeypatch.setattr(_fs, "copy_sparse", failing(step, _fs.copy_sparse, at_call=2))
    elif step == "model_write":
        monkeypatch.setattr(_fs, "write_all", failing(step, _fs.write_all))
    elif step == "model_fsync":  # two data files, then the model
        monkeypatch.setattr(os, "fsync", failing(step, os.fsync, at_call=3))
    else:
        monkeypatch.setattr(os, "replace", failing(step, os.replace,
                                                   after=step == "after_replace"))
    expected = UserError if isinstance(error, OSError) else error
    with pytest.raises(expected) as caught:
        modelio.save_model(model, target, source=loaded)
    if expected is UserError:
        assert str(caught.value) == f"{target}: cannot be written (No space left on device)"
    monkeypatch.undo()
    assert step in calls
    assert _files(src) == inputs
    after = _files(out)
    assert not [name for name in after if name.startswith(".")], after
    if step == "after_replace":  # the new model is in place, with its complete data
        assert after["out.onnx"] != before["out.onnx"] and len(after) == 5
        assert {k: v for k, v in after.items() if k != "out.onnx"}.items() >= {
            k: v for k, v in before.items() if k != "out.onnx"}.items()
        saved = modelio.load_model(target)
        assert [f.path.read_bytes() for f in saved.data_files] == [W.tobytes(), b"\x05" * 48]
    else:
        assert after == before


# --- Item 2 of issue 18: planted names never make a save delete or read anything ----------


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


_TOUCHED: list[tuple[str, ...]] = []
_RECORDING: list[bool] = []


def _record(event: str, args: tuple) -> None:
    if not _RECORDING:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _TOUCHED.append(("open", os.fsdecode(args[0]), str(args[2] & os.O_CREAT)))
    elif event in ("os.remove", "os.rename", "os.link", "os.scandir", "os.listdir"):
        _TOUCHED.append((event, *(os.fsdecode(a) for a in args
                                  if isinstance(a, (str, bytes, os.PathLike)))))


sys.addaudithook(_record)


def test_planted_names_never_cause_a_deletion(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared output folder holding names of the old sweep's pattern: a journal whose
    ``target``/``remove`` are absolute paths outside the folder, an empty temp file carrying
    a live model's token; and names of the new temp pattern. An unrelated save (also one that
    fails) deletes and reads none of them, inside or outside the folder; it lists no folder
    and removes only names it created itself."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.onnx").write_bytes(b"")
    (outside / "m.onnx.0123456789abcdef-0.data").write_bytes(b"not ours, outside")
    shared = tmp_path / "shared"
    shared.mkdir()
    path = write_model(tmp_path / "in", place(external("w", "w.bin"), "graph"))
    _save(path, shared / "live.onnx")
    [live] = modelio.load_model(shared / "live.onnx").data_files
    token = live.location.rsplit(".", 2)[1].split("-")[0]
    planted = {
        f".spatialdrop-999999-{'a' * 16}-j.tmp": json.dumps(
            {"target": str(outside / "m.onnx"),
             "remove": [str(outside / "m.onnx.0123456789abcdef-0.data"), live.location]}),
        f".spatialdrop-999999-{token}.tmp": "",
        f".spatialdrop-999999-{token}-d0.tmp": "",
        f".spatialdrop-{token}.tmp": "",
        f"other.onnx.{token}-0.data": "a look-alike",
    }
    for name, text in planted.items():
        (shared / name).write_text(text)
    before = _tree(tmp_path)
    loaded = modelio.load_model(path)
    _TOUCHED.clear()
    _RECORDING.append(True)
    try:
        modelio.save_model(loaded.model, shared / "other.onnx", source=loaded)
        monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.EIO, "Input/output error")))
        with pytest.raises(UserError, match="cannot be written"):
            modelio.save_model(loaded.model, shared / "third.onnx", source=loaded)
    finally:
        _RECORDING.clear()
        monkeypatch.undo()
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert modelio.load_model(shared / "live.onnx").data_files[0].path.read_bytes() == \
        W.tobytes()
    assert "third.onnx" not in os.listdir(shared)
    created = {event[1] for event in _TOUCHED if event[0] == "open" and event[2] != "0"}
    removed = [event[1] for event in _TOUCHED if event[0] == "os.remove"]
    assert removed and set(removed) <= created, (removed, created)
    assert not [e for e in _TOUCHED if e[0] in ("os.scandir", "os.listdir")], _TOUCHED
    # read: the input's folder and data file, the output folder itself (its descriptor)
    opened = {event[1] for event in _TOUCHED if event[0] == "open"} - created
    assert opened <= {str(tmp_path / "in"), "w.bin", str(shared)} | {
        name for name in opened if name.startswith("/proc/self/fd/")}, opened


# --- Items 4, 14: disk full, read-only folders -----------------------------------------------


_FULL_DISK_CHILD = """
import json, os, subprocess, sys
from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import UserError
disk, embedded, with_data = sys.argv[1:4]
loaded = modelio.load_model(with_data)
results = {}
def attempt(key, model, target, source):
    try:
        modelio.save_model(model, target, source=source)
        results[key] = "written"
    except UserError as err:
        results[key] = str(err)
    results[key + "_left"] = sorted(os.listdir(disk))
attempt("copy", loaded.model, disk + "/a.onnx", loaded)
big = modelio.load_model(embedded)
attempt("model", big.model, disk + "/b.onnx", big)
with open(disk + "/c.onnx", "wb") as handle:
    handle.write(b"previous")
attempt("replace", big.model, disk + "/c.onnx", big)
subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
attempt("read_only", loaded.model, disk + "/d.onnx", loaded)
results["c"] = open(disk + "/c.onnx", "rb").read().decode()
print(json.dumps(results))
"""


def test_full_disk_and_read_only_folder_leave_nothing(tmp_path: Path) -> None:
    """A 1 MiB tmpfs in a private mount namespace: data copy and model write both fail."""
    with_data = write_model(tmp_path / "in", place(external("w", "w.bin", "0", None), "graph"),
                            data=os.urandom(3 << 20))
    weights = onnx.numpy_helper.from_array(np.ones(1 << 19, np.float32), "w")  # 2 MiB
    embedded = write_model(tmp_path / "emb", place(weights, "graph"), data=None)
    disk = tmp_path / "disk"
    disk.mkdir()
    namespace = shutil.which("unshare") and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    assert namespace, "this test needs unshare -m (root, as the suite runs in CI)"
    script = (f"mount --make-rprivate / && mount -t tmpfs -o size=1m tmpfs {disk} && "
              f'exec "{sys.executable}" -c "$0" "$@"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, _FULL_DISK_CHILD, str(disk),
                           str(embedded), str(with_data)], env=ENV, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["copy"] == f"{disk}/a.onnx: cannot be written (No space left on device)"
    assert result["copy_left"] == []
    assert result["model"] == f"{disk}/b.onnx: cannot be written (No space left on device)"
    assert result["model_left"] == []
    assert result["replace_left"] == ["c.onnx"] and result["c"] == "previous"
    assert result["read_only"] == f"{disk}/d.onnx: folder {disk} is not writable"
    assert result["read_only_left"] == ["c.onnx"]


# --- Items 4, 14: SIGKILL and SIGTERM at random moments ----------------------------------

BIG = 3 << 29  # 1.5 GiB, sparse
CHUNK = 1 << 20
CHUNKS = [k * (128 << 20) for k in range(12)]
SMALL = 2 << 20

_SAVER = """
import signal, sys
from spatialdrop_onnx import modelio
source, target, mode = sys.argv[1:4]
if mode == "term":  # as the CLI does
    def stop(signum, frame):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, stop)
loaded = modelio.load_model(source)
print("ready", flush=True)
modelio.save_model(loaded.model, target, source=loaded)
print("saved", flush=True)
sys.stdin.read()  # wait for the signal
"""


def _big_source(folder: Path) -> Path:
    folder.mkdir()
    with open(folder / "big.bin", "wb") as handle:
        handle.truncate(BIG)
        for k, start in enumerate(CHUNKS):
            handle.seek(start)
            handle.write(bytes([k + 1]) * CHUNK)
    (folder / "small.bin").write_bytes(os.urandom(SMALL))
    tensors = [external("a", "big.bin", "0", str(BIG)), external("b", "small.bin", "0",
                                                                 str(SMALL)),
               external("c", "big.bin", str(CHUNKS[1]), str(CHUNK))]
    for tensor, dims in zip(tensors, (BIG // 4, SMALL // 4, CHUNK // 4), strict=True):
        tensor.dims[:] = [dims]
    model = place(tensors[0], "graph")
    model.graph.initializer.extend(tensors[1:])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _digest(path: Path) -> str:
    """Content hash of a data file: every byte if small, the written chunks if big."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        for start in (CHUNKS if size == BIG else [0]):
            handle.seek(start)
            digest.update(handle.read(CHUNK if size == BIG else size))
    return f"{size}:{digest.hexdigest()}"


def _input_state(folder: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, _digest(p)) for p in
            sorted(folder.iterdir())}


def _check_output(out: Path, expected: dict[str, str]) -> tuple[set[str], set[str]]:
    """Target absent, or loadable with every tensor's data file complete; returns
    (names the target uses, temp names)."""
    used: set[str] = set()
    target = out / "out.onnx"
    if target.exists():
        loaded = modelio.load_model(target)
        by_tensor = {t.name: dict((e.key, e.value) for e in t.external_data)["location"]
                     for t, _ in modelio.external_tensors(loaded.model)}
        assert sorted(by_tensor) == ["a", "b", "c"]
        for name, location in by_tensor.items():
            assert _digest(out / location) == expected[name], name
            used.add(location)
    temps = {p.name for p in out.iterdir() if modelio.is_temp_name(p.name)}
    return used, temps


def _save_seconds(source: Path, folder: Path) -> float:
    """How long one save of ``source`` takes here (the kills are spread over it)."""
    folder.mkdir()
    loaded = modelio.load_model(source)
    started = time.perf_counter()
    modelio.save_model(loaded.model, folder / "out.onnx", source=loaded)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


def _kill_runs(tmp_path: Path, mode: str, kills: int, seed: int) -> list[dict]:
    """One save per child, killed at a random moment of it (or just after it)."""
    source = _big_source(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    state = _input_state(source.parent)
    expected = {"a": _digest(source.parent / "big.bin"),
                "b": _digest(source.parent / "small.bin")}
    expected["c"] = expected["a"]
    seconds = _save_seconds(source, tmp_path / "probe")
    rng = random.Random(seed)
    kept: set[str] = set()  # data files of complete targets (never removed)
    runs = []
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(source), str(out / "out.onnx"),
                                  mode], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.25 * seconds))
        child.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
        assert child.returncode == (-signal.SIGKILL if mode == "kill" else 143), stderr
        assert _input_state(source.parent) == state
        used, temps = _check_output(out, expected)  # old or new target, never partial
        kept |= used
        others = {p.name for p in out.iterdir()} - kept - temps - {"out.onnx"}
        if mode == "kill":  # only what the killed save had created, under its token
            pattern = modelio.data_file_pattern("out.onnx")
            assert all(pattern.fullmatch(name) for name in others), others
            tokens = {name.rsplit(".", 2)[1].split("-")[0] for name in others}
            tokens |= {modelio.TEMP_PATTERN.fullmatch(t)["token"] for t in temps}
            assert len(tokens) <= 1, (temps, others)
            for name in others:  # and it no longer grows: clear it for the next run
                (out / name).unlink()
            for name in temps:
                (out / name).unlink()
        runs.append({"saved": "saved" in stdout, "temps": sorted(temps),
                     "others": sorted(others)})
    return runs


def test_sigkill_at_random_moments_never_leaves_a_partial_output(tmp_path: Path) -> None:
    runs = _kill_runs(tmp_path, "kill", kills=8, seed=9)
    # Some kill landed mid-save (what the test is about). Whether another also landed after a
    # save completed depends on the machine's load (all 8 landed early once on a busy machine):
    # not asserted, the per-run checks in _kill_runs hold either way.
    assert any(run["temps"] or run["others"] for run in runs), runs


def test_sigterm_at_random_moments_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM becomes SystemExit (as in the CLI): the save removes what it created."""
    runs = _kill_runs(tmp_path, "term", kills=6, seed=14)
    assert all(not run["temps"] and not run["others"] for run in runs), runs
    assert not all(run["saved"] for run in runs), runs  # some landed mid-save


# --- Item 14: four concurrent writers ---------------------------------------------------

_WRITER = """
import os, sys, time
from spatialdrop_onnx import modelio
source, target, go = sys.argv[1:4]
loaded = modelio.load_model(source)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
for _ in range(4):
    modelio.save_model(loaded.model, target, source=loaded)
"""

_READER = """
import json, os, sys, time
from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import UserError
target, go, stop = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
counts = {"consistent": 0, "moved_on": 0, "mixed": 0}
while not os.path.exists(stop):
    try:
        loaded = modelio.load_model(target)
        data = modelio.read_external_bytes(loaded.model.graph.initializer[0], loaded.folder,
                                           1 << 23)
    except UserError:
        counts["moved_on"] += 1  # no target yet, or its data was replaced after we read it
        continue
    writer = int(loaded.model.graph.name.split("-")[1])
    counts["consistent" if data == bytes([writer]) * len(data) else "mixed"] += 1
print(json.dumps(counts))
"""


def test_four_concurrent_writers_never_mix_model_and_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target, go, stop = out / "out.onnx", tmp_path / "go", tmp_path / "stop"
    sources = []
    for writer in range(1, 5):
        tensor = external("w", "w.bin", "0", str(4 << 20))
        tensor.dims[:] = [1 << 20]
        model = place(tensor, "graph")
        model.graph.name = f"writer-{writer}"
        sources.append(write_model(tmp_path / f"src{writer}", model,
                                   data=bytes([writer]) * (4 << 20)))
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(target), str(go), str(stop)],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(s), str(target), str(go)],
                                env=ENV, stdout=subprocess.PIPE, text=True) for s in sources]
    for child in [reader, *writers]:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    go.touch()
    assert [child.wait(timeout=60) for child in writers] == [0, 0, 0, 0]
    time.sleep(0.2)
    stop.touch()
    out_text, _ = reader.communicate(timeout=30)
    counts = json.loads(out_text)
    assert counts["mixed"] == 0 and counts["consistent"] > 0, counts
    loaded = modelio.load_model(target)
    writer = int(loaded.model.graph.name.split("-")[1])
    [file] = loaded.data_files
    assert file.path.read_bytes() == bytes([writer]) * (4 << 20)
    # every save keeps its own complete data file (none is removed); no temp file is left
    left = sorted(p.name for p in out.iterdir() if p.name != "out.onnx")
    pattern = modelio.data_file_pattern("out.onnx")
    assert len(left) == 16 and all(pattern.fullmatch(name) for name in left), left
    assert sorted({(out / name).read_bytes()[:1] for name in left}) == [
        bytes([w]) for w in range(1, 5)]

