"""Loading an ONNX file: kind and size checked before reading, one descriptor, one-line errors."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import OutOfMemory, UserError, printable
from . import _fs
from . import skeleton as skeleton_module
from .external import ExternalFile, validate_external_data
from .skeleton import SkeletonSource, WireError, read_skeleton

#: Oldest IR version we accept (IR 3 introduced opset imports).
MIN_IR_VERSION = 3
#: Largest message protobuf parses (2 GiB - 1).
MAX_MODEL_BYTES = 2**31 - 1


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model with everything needed to write it back safely.

    With ``skeleton`` set, ``model`` is a skeleton: its large tensors hold
    placeholders instead of their data, which :func:`~.writing.save_model`
    (given this as ``source``) copies from the still open input file, and
    :func:`~.skeleton.fill_placeholders` puts back in memory.
    """

    model: onnx.ModelProto
    path: Path                  #: as given
    folder: Path                #: absolute folder external data is relative to
    device: int                 #: ``st_dev`` of the model file
    inode: int                  #: ``st_ino`` of the model file
    data_files: tuple[ExternalFile, ...]
    skeleton: SkeletonSource | None = None  #: the input file, while placeholders need it

    @property
    def identity(self) -> tuple[int, int]:
        return self.device, self.inode


def shown(path: str | os.PathLike) -> str:
    """A user's path for an error line (escaped: a file name can hold a newline)."""
    return printable(os.fspath(path), 400)


_ONNX_LIMIT = ("protobuf can parse (2 GiB - 1); store the weights as external data "
               "(onnx.save_model(..., save_as_external_data=True))")


def open_input(path: str | os.PathLike, *, expected: str = "an .onnx file",
               limit: str = _ONNX_LIMIT) -> tuple[int, os.stat_result]:
    """A descriptor of the input file ``path`` and its ``fstat``; one-line errors (exit 3).

    A symlink is followed; anything but a regular file (directory, FIFO,
    device, socket) is refused before it is opened for reading (``O_PATH``
    first: no driver is reached, a FIFO never blocks), then an empty file and
    one above :data:`MAX_MODEL_BYTES` ("more than ``limit``"). Every input
    file of the tool (ONNX models, Keras files) is opened here.
    """
    path = Path(path)
    try:
        fd, info = _fs.open_regular(path, follow=True)
    except FileNotFoundError:
        raise UserError(f"{shown(path)}: no such file") from None
    except _fs.NotRegular as err:
        if stat.S_ISDIR(err.mode):
            raise UserError(f"{shown(path)}: is a directory, expected {expected}") from None
        kind = _fs.describe_kind(err.mode)
        raise UserError(f"{shown(path)}: is {kind}, not a regular file") from None
    except OSError as err:
        raise UserError(f"{shown(path)}: cannot be opened ({err.strerror})") from None
    try:
        if info.st_size == 0:
            raise UserError(f"{shown(path)}: file is empty")
        if info.st_size > MAX_MODEL_BYTES:
            raise UserError(f"{shown(path)}: {info.st_size} bytes is more than {limit}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read_all(fd: int, info: os.stat_result, path: Path) -> bytearray:
    try:
        return _fs.read_exactly(fd, info.st_size)
    except EOFError:
        raise UserError(f"{shown(path)}: file shrank while it was read") from None
    except MemoryError:
        raise OutOfMemory(f"{shown(path)}: not enough memory to read "
                          f"{info.st_size} bytes") from None
    except OSError as err:
        raise UserError(f"{shown(path)}: cannot be read ({err.strerror})") from None


def _read_skeleton(fd: int, info: os.stat_result, path: Path
                   ) -> tuple[bytearray, bytes | None]:
    """The skeleton's bytes and token (None: no placeholder, or the whole file was read)."""
    if info.st_size < skeleton_module.MIN_FILE_BYTES:
        return _read_all(fd, info, path), None
    try:
        found = read_skeleton(fd, info.st_size)
    except WireError as err:
        raise UserError(f"{shown(path)}: not a valid ONNX model (DecodeError: {err})") from None
    except EOFError:
        raise UserError(f"{shown(path)}: file shrank while it was read") from None
    except MemoryError:
        raise OutOfMemory(f"{shown(path)}: not enough memory to read it") from None
    except OSError as err:
        raise UserError(f"{shown(path)}: cannot be read ({err.strerror})") from None
    if found is None:
        return _read_all(fd, info, path), None
    return found.data, (found.token if found.placeholders else None)


def load_model(path: str | os.PathLike, *, skeleton: bool = False) -> LoadedModel:
    """Load an ONNX model without reading external data; one-line errors for bad files.

    Refuses, before reading, anything but a regular file (a symlink to one is
    fine), an empty file and one larger than protobuf can parse; then corrupt
    protobufs, non-ONNX files, IR/opset versions this onnx cannot handle, and
    any unsafe external-data reference (validated on the parsed model, always).

    With ``skeleton``, large embedded tensors are not read: they hold
    placeholders (see :mod:`.skeleton`) and the file stays open in
    ``LoadedModel.skeleton`` until the result is saved with this as ``source``.
    """
    given = Path(path)
    fd, info = open_input(given)
    keep = False
    try:
        if skeleton:
            data, token = _read_skeleton(fd, info, given)
        else:
            data, token = _read_all(fd, info, given), None
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
        source = None
        if token is not None:
            source = SkeletonSource(fd, info, token, shown(given))
            keep = True
    finally:
        if not keep:
            os.close(fd)
    return LoadedModel(model=model, path=given, folder=folder, device=info.st_dev,
                       inode=info.st_ino, data_files=data_files, skeleton=source)


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
