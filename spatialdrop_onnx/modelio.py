"""Loading and saving ONNX files safely.

Writes go to a temporary file in the destination folder, are fsynced, then
renamed over the destination: no half-written output, and a symlink planted
at the output path is replaced, never followed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import UserError


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model without reading external data; one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an .onnx file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: file is empty")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: not a valid ONNX model ({err.__class__.__name__})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise UserError(f"{path}: not a valid ONNX model (no graph or opset import)")
    return model


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Serialise ``model`` to ``path`` atomically."""
    atomic_write_bytes(path, model.SerializeToString())
