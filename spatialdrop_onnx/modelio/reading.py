"""Loading an ONNX file: kind and size checked before reading, one descriptor, one-line errors."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import UserError, printable
from . import _fs
from .external import ExternalFile, validate_external_data

#: Oldest IR version we accept (IR 3 introduced opset imports).
MIN_IR_VERSION = 3
#: Largest message protobuf parses (2 GiB - 1).
MAX_MODEL_BYTES = 2**31 - 1


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model with everything needed to write it back safely."""

    model: onnx.ModelProto
    path: Path                  #: as given
    folder: Path                #: absolute folder external data is relative to
    device: int                 #: ``st_dev`` of the model file
    inode: int                  #: ``st_ino`` of the model file
    data_files: tuple[ExternalFile, ...]

    @property
    def identity(self) -> tuple[int, int]:
        return self.device, self.inode


def shown(path: str | os.PathLike) -> str:
    """A user's path for an error line (escaped: a file name can hold a newline)."""
    return printable(os.fspath(path), 400)


def _too_large(path: Path, size: int) -> UserError:
    return UserError(
        f"{shown(path)}: {size} bytes is more than protobuf can parse (2 GiB - 1); store the "
        "weights as external data (onnx.save_model(..., save_as_external_data=True))")


def _read(path: Path) -> tuple[bytearray, os.stat_result]:
    """The bytes of ``path`` through one descriptor, refusing by kind and size first."""
    try:
        fd, info = _fs.open_regular(path, follow=True)
    except FileNotFoundError:
        raise UserError(f"{shown(path)}: no such file") from None
    except _fs.NotRegular as err:
        if stat.S_ISDIR(err.mode):
            raise UserError(f"{shown(path)}: is a directory, expected an .onnx file") from None
        kind = _fs.describe_kind(err.mode)
        raise UserError(f"{shown(path)}: is {kind}, not a regular file") from None
    except OSError as err:
        raise UserError(f"{shown(path)}: cannot be opened ({err.strerror})") from None
    try:
        if info.st_size == 0:
            raise UserError(f"{shown(path)}: file is empty")
        if info.st_size > MAX_MODEL_BYTES:
            raise _too_large(path, info.st_size)
        try:
            data = _fs.read_exactly(fd, info.st_size)
        except EOFError:
            raise UserError(f"{shown(path)}: file shrank while it was read") from None
        except MemoryError:
            raise UserError(f"{shown(path)}: not enough memory to read "
                            f"{info.st_size} bytes") from None
        except OSError as err:
            raise UserError(f"{shown(path)}: cannot be read ({err.strerror})") from None
    finally:
        os.close(fd)
    return data, info


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load an ONNX model without reading external data; one-line errors for bad files.

    Refuses, before reading, anything but a regular file (a symlink to one is
    fine), an empty file and one larger than protobuf can parse; then corrupt
    protobufs, non-ONNX files, IR/opset versions this onnx cannot handle, and
    any unsafe external-data reference (validated on the parsed model, always).
    """
    given = Path(path)
    data, info = _read(given)
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as err:  # noqa: BLE001 - DecodeError, RecursionError, upb errors
        raise UserError(f"{shown(given)}: not a valid ONNX model "
                        f"({err.__class__.__name__})") from None
    del data
    check_versions(model, str(given))
    folder = given.absolute().parent
    try:
        data_files = validate_external_data(model, folder)
    except UserError as err:
        raise type(err)(f"{shown(given)}: {err}") from None
    return LoadedModel(model=model, path=given, folder=folder, device=info.st_dev,
                       inode=info.st_ino, data_files=data_files)


def check_versions(model: onnx.ModelProto, label: str = "model") -> None:
    """Refuse a model with no graph, or an IR/opset version outside what onnx supports."""
    if not model.HasField("graph") or not model.opset_import:
        raise UserError(f"{label}: not a valid ONNX model (no graph or opset import)")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise UserError(
            f"{label}: IR version {model.ir_version} is not supported "
            f"(this onnx reads {MIN_IR_VERSION}..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= newest:
            raise UserError(
                f"{label}: default-domain opset {opset.version} is not supported "
                f"(this onnx knows 1..{newest})"
            )
