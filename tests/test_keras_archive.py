"""A ``.keras`` zip bomb is refused before anything is extracted (issue 9, item 16).

No TensorFlow needed: the check runs in ``detect_format``, before the Keras
stack is imported.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spatialdrop_onnx.cli import main
from spatialdrop_onnx.converters import keras_archive
from spatialdrop_onnx.converters.keras_archive import check_keras_archive
from spatialdrop_onnx.converters.keras_convert import detect_format
from spatialdrop_onnx.errors import RefusedError, UserError

MIB = 1024**2
CONFIG = json.dumps({"class_name": "Sequential", "config": {"layers": []}}).encode()


def _zeros_member(archive: zipfile.ZipFile, name: str, size: int) -> None:
    chunk = bytes(MIB)
    with archive.open(name, "w", force_zip64=True) as member:
        for _ in range(size // MIB):
            member.write(chunk)


def declared_bomb(path: Path, declared: int) -> Path:
    """A small honest archive whose config.json then *declares* ``declared`` bytes
    (local header and central directory patched): a bomb costs nothing to build."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", CONFIG)
        archive.writestr("metadata.json", b"{}")
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    made = {"declared 3 GiB": declared_bomb(folder / "declared.keras", 3 * 1024**3)}
    # 100 MiB of deflated zeros: a ~100 KB archive (x1000).
    made["deflated zeros"] = folder / "zeros.keras"
    with zipfile.ZipFile(made["deflated zeros"], "w", compression=zipfile.ZIP_DEFLATED) as z:
        _zeros_member(z, "config.json", 100 * MIB)
    # One bomb member next to 3 MiB of incompressible padding: the archive-wide ratio
    # is only ~27, the member's is ~1000.
    made["padded member"] = folder / "padded.keras"
    with zipfile.ZipFile(made["padded member"], "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", CONFIG)
        z.writestr("assets/noise.bin", os.urandom(3 * MIB), compress_type=zipfile.ZIP_STORED)
        _zeros_member(z, "model.weights.h5", 80 * MIB)
    return made


@pytest.mark.parametrize("kind,reason", [
    ("declared 3 GiB", "would inflate to 3.0 GiB (more than 2.0 GiB)"),
    ("deflated zeros", "would inflate to 100.0 MiB ("),
    ("padded member", "whose member 'model.weights.h5' would inflate from"),
])
def test_zip_bombs_are_refused(bombs: dict[str, Path], kind: str, reason: str) -> None:
    with pytest.raises(RefusedError, match="a zip bomb is not a model") as caught:
        check_keras_archive(bombs[kind])
    assert str(caught.value).startswith(f"{bombs[kind]}: refusing to load a .keras archive")
    assert reason in str(caught.value)
    with pytest.raises(RefusedError):
        detect_format(bombs[kind])


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_archive, "MAX_MEMBERS", 5)
    path = tmp_path / "many.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", CONFIG)
        for i in range(5):
            archive.writestr(f"assets/{i}", b"")
    with pytest.raises(RefusedError, match="archive of 6 members"):
        check_keras_archive(path)


def test_ordinary_archives_pass(tmp_path: Path) -> None:
    stored = tmp_path / "stored.keras"  # how Keras writes: config, metadata, weights
    with zipfile.ZipFile(stored, "w") as archive:
        archive.writestr("config.json", CONFIG)
        archive.writestr("metadata.json", b"{}")
        archive.writestr("model.weights.h5", os.urandom(2 * MIB))
    assert detect_format(stored) == "keras"
    # Very compressible but small: under the 64 MiB floor no ratio is checked.
    small = tmp_path / "zeros.keras"
    with zipfile.ZipFile(small, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", CONFIG)
        _zeros_member(archive, "model.weights.h5", 32 * MIB)
    assert small.stat().st_size < MIB
    assert detect_format(small) == "keras"
    # Not a zip at all: left to detect_format's own message.
    (tmp_path / "text.keras").write_text("not a zip")
    check_keras_archive(tmp_path / "text.keras")


def test_convert_refuses_before_extracting(bombs: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member of the archive was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_extraction)
    out = tmp_path / "out.onnx"
    for path in bombs.values():
        assert main(["convert", str(path), "-o", str(out)]) == 4
        err = capsys.readouterr().err
        assert err.startswith(f"spatialdrop-onnx: error: {path}: refusing to load a .keras")
        assert len(err.splitlines()) == 1
    assert main(["convert", str(bombs["declared 3 GiB"]), "-o", str(out), "--trust-model"]) == 4
    assert not out.exists() and os.listdir(tmp_path) == []


def test_refusal_costs_no_memory(bombs: dict[str, Path]) -> None:
    # Peak RSS of the check itself, in a fresh process (imports measured first).
    script = f"""
import sys
from spatialdrop_onnx.converters.keras_convert import detect_format
from spatialdrop_onnx.errors import RefusedError, UserError
def peak():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
before = peak()
for path in {[str(p) for p in bombs.values()]!r}:
    try:
        detect_format(__import__('pathlib').Path(path))
    except RefusedError:
        pass
    else:
        sys.exit('not refused: ' + path)
print(peak() - before)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert int(done.stdout) < 16 * 1024, f"peak RSS grew by {done.stdout.strip()} KiB"


# --- Issue 18 item 3: Keras inputs are opened like ONNX inputs ---------------------------

_DRIVER = Path(__file__).resolve().parent / "cli_driver.py"
_AS_LIMIT = 6 * 1024**3  # address space: a read without limit fails here, not on the machine


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, _AS_LIMIT))


def test_convert_opens_only_regular_files(tmp_path: Path) -> None:
    """A FIFO named ``model.keras``, an ``.h5`` symlink to a FIFO (also with --trust-model)
    and a ``.keras`` symlink to ``/dev/zero``: refused in one line, exit 3, without blocking
    or reading; ``inspect`` refuses the same files with the same code and reason. All run in
    one child with a timeout and a memory limit, so a regression fails instead of hanging."""
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    (tmp_path / "model.h5").symlink_to(fifo)
    (tmp_path / "dev.keras").symlink_to("/dev/zero")
    out = tmp_path / "out.onnx"
    cases = {"model.keras": "is a FIFO, not a regular file",
             "model.h5": "is a FIFO, not a regular file",
             "dev.keras": "is a character device, not a regular file"}
    invocations = []
    for name in cases:
        path = str(tmp_path / name)
        invocations += [["convert", path, "-o", str(out)], ["inspect", path]]
    invocations.append(["convert", str(tmp_path / "model.h5"), "-o", str(out), "--trust-model"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(_DRIVER.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(_DRIVER), json.dumps(invocations)],
                          capture_output=True, text=True, timeout=120, env=env, check=False,
                          preexec_fn=_limit_memory)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    expected = [reason for reason in cases.values() for _ in range(2)] + [cases["model.h5"]]
    for result, reason in zip(results, expected, strict=True):
        path = result["argv"][1]
        assert result["code"] == 3, result
        assert result["err"] == f"spatialdrop-onnx: error: {path}: {reason}\n", result
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)


def test_oversized_and_empty_keras_files_are_refused(tmp_path: Path) -> None:
    """The size limits of the ONNX commands: empty, and above 2 GiB - 1 (a sparse file,
    refused by its size before anything is read)."""
    empty = tmp_path / "empty.keras"
    empty.touch()
    with pytest.raises(UserError, match=f"^{empty}: file is empty$"):
        detect_format(empty)
    huge = tmp_path / "huge.h5"
    with open(huge, "wb") as handle:
        handle.truncate(2**31)
    with pytest.raises(UserError, match=r"2147483648 bytes is more than a converted model can "
                                        r"hold") as caught:
        detect_format(huge)
    assert "\n" not in str(caught.value)


def test_check_keras_archive_opens_paths_safely(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.keras"
    os.mkfifo(fifo)
    def expired(signum: int, frame: object) -> None:
        raise AssertionError("opening the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)  # a regression fails instead of hanging
    try:
        with pytest.raises(UserError, match="is a FIFO, not a regular file"):
            check_keras_archive(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(UserError, match="no such file"):
        check_keras_archive(tmp_path / "missing.keras")
