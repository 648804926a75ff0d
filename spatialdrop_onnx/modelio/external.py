"""Validating external-data references, and the one bounded read of a small tensor.

Validation works on the *parsed* model and inspects files with ``lstat``
only: nothing is opened. Every reference is resolved against the model's
folder, never against the working directory. A tensor counts as external if
``data_location`` is ``EXTERNAL`` or it has any ``external_data`` entry; an
unknown ``data_location`` value is refused. Rules:

* keys are ``location``, ``offset``, ``length``, ``checksum``, none repeated
  (``basepath`` and anything else redirect or confuse readers);
* ``location`` is present, not empty, no NUL, no backslash, not absolute,
  no drive letter, no ``..`` component;
* every component is ``lstat``-ed: no symlink (file or folder), folders on
  the way, the last one a regular file (no FIFO, device, socket) with exactly
  one hard link;
* ``offset``/``length`` are ASCII decimal digits (at most 19, below 2**63)
  and ``offset + length`` is within the file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import unknown_fields
from onnx import TensorProto

from ..errors import RefusedError, UserError, printable
from . import _fs
from .tensors import Where, is_external, walk_tensors

#: ``external_data`` keys we accept. ``basepath`` is refused: it redirects reads.
KNOWN_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
_DATA_LOCATION_FIELD = TensorProto.DESCRIPTOR.fields_by_name["data_location"].number
_MAX_DIGITS = 19
_MAX_COUNT = 2**63 - 1
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class ExternalFile:
    """One validated external-data file."""

    location: str  #: as written in the model
    path: Path     #: inside the model folder, reached without a symlink
    device: int    #: ``st_dev`` at validation
    inode: int     #: ``st_ino`` at validation
    size: int      #: ``st_size`` at validation
    mode: int      #: ``st_mode`` at validation

    @property
    def identity(self) -> tuple[int, int]:
        return self.device, self.inode


@dataclass(frozen=True)
class _Reference:
    file: ExternalFile
    offset: int
    length: int


class _Problem(Exception):
    """A reason, completed into a full message by the caller."""

    def __init__(self, reason: str, error: type[UserError] = RefusedError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _quote(text: str) -> str:
    return f"'{printable(text, 120)}'"


def location_parts(location: str) -> list[str]:
    """The folder components of a ``location``; :class:`_Problem` if it could escape."""
    if not location:
        raise _Problem("is empty")
    if "\x00" in location:
        raise _Problem("contains a NUL character")
    if "\\" in location:
        raise _Problem("contains a backslash")
    if location.startswith("/"):
        raise _Problem("is absolute")
    if _DRIVE.match(location):
        raise _Problem("starts with a drive letter")
    parts = [part for part in location.split("/") if part not in ("", ".")]
    if not parts:
        raise _Problem("names no file")
    if ".." in parts:
        raise _Problem("leaves the model folder")
    return parts


def _inspect(folder: Path, location: str) -> ExternalFile:
    """``lstat`` every component of ``location`` under ``folder``."""
    parts = location_parts(location)
    current = folder
    info = None
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise _Problem("does not exist", UserError) from None
        except NotADirectoryError:
            raise _Problem("is not a path through folders") from None
        except OSError as err:
            raise _Problem(f"cannot be inspected ({err.strerror})", UserError) from None
        if stat.S_ISLNK(info.st_mode):
            shown = "/".join(parts[: index + 1])
            raise _Problem(f"goes through a symlink ({printable(shown, 120)})")
        if index < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
            raise _Problem("is not a path through folders")
    assert info is not None
    if not stat.S_ISREG(info.st_mode):
        raise _Problem(f"is {_fs.describe_kind(info.st_mode)}, not a regular file")
    if info.st_nlink != 1:
        raise _Problem(f"is a file with {info.st_nlink} hard links")
    return ExternalFile(location=location, path=current, device=info.st_dev,
                        inode=info.st_ino, size=info.st_size, mode=info.st_mode)


def _count(key: str, value: str) -> int:
    if not value or not all("0" <= ch <= "9" for ch in value):
        raise _Problem(f"{key} {_quote(value)} is not a non-negative decimal integer")
    if len(value) > _MAX_DIGITS or int(value) > _MAX_COUNT:
        raise _Problem(f"{key} {_quote(value)} is too large")
    return int(value)


def _entries(tensor: TensorProto) -> dict[str, str]:
    if tensor.data_location not in (TensorProto.DEFAULT, TensorProto.EXTERNAL) or any(
            field.field_number == _DATA_LOCATION_FIELD
            for field in unknown_fields.UnknownFieldSet(tensor)):
        raise _Problem("data_location has a value this tool does not know")
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in KNOWN_EXTERNAL_KEYS:
            raise _Problem(f"key {_quote(entry.key)} is not allowed")
        if entry.key in entries:
            raise _Problem(f"key {_quote(entry.key)} is repeated")
        entries[entry.key] = entry.value
    if "location" not in entries:
        raise _Problem("has no location")
    return entries


def _check(tensor: TensorProto, folder: Path, cache: dict[str, ExternalFile]) -> _Reference:
    entries = _entries(tensor)
    location = entries["location"]
    try:
        file = cache.get(location) or _inspect(folder, location)
    except _Problem as problem:
        raise _Problem(f"location {_quote(location)} {problem.reason}", problem.error) from None
    cache[location] = file
    offset = _count("offset", entries.get("offset", "0"))
    length = _count("length", entries["length"]) if "length" in entries else None
    if offset > file.size:
        raise _Problem(f"offset {offset} is beyond the end of {_quote(location)} "
                       f"({file.size} bytes)")
    if length is None:
        length = file.size - offset
    if offset + length > file.size:
        raise _Problem(f"offset {offset} + length {length} is beyond the end of "
                       f"{_quote(location)} ({file.size} bytes)")
    return _Reference(file, offset, length)


def _failure(tensor: TensorProto, where: Where | str, problem: _Problem) -> UserError:
    return problem.error(
        f"external data of tensor {_quote(tensor.name)} ({where}): {problem.reason}")


def _needs_check(tensor: TensorProto) -> bool:
    if is_external(tensor):
        return True
    # An unknown data_location value parses into the unknown fields (closed enum).
    return any(field.field_number == _DATA_LOCATION_FIELD
               for field in unknown_fields.UnknownFieldSet(tensor))


def validate_external_data(model: onnx.ModelProto,
                           folder: str | os.PathLike) -> tuple[ExternalFile, ...]:
    """Check every external-data reference of ``model`` against ``folder``.

    Returns one :class:`ExternalFile` per distinct ``location``, in order of
    first use. Raises :class:`~spatialdrop_onnx.errors.RefusedError` (unsafe
    reference) or :class:`~spatialdrop_onnx.errors.UserError` (a missing file)
    naming the tensor and where it sits. Nothing is opened: only ``lstat``.
    """
    return check_tensors(referencing_tensors(model), folder)


def referencing_tensors(model: onnx.ModelProto) -> list[tuple[TensorProto, Where]]:
    """The tensors of ``model`` that validation must look at (one walk)."""
    return [(tensor, where) for tensor, where in walk_tensors(model) if _needs_check(tensor)]


def check_tensors(found: list[tuple[TensorProto, Where]],
                  folder: str | os.PathLike) -> tuple[ExternalFile, ...]:
    """:func:`validate_external_data` for tensors already found by :func:`referencing_tensors`."""
    base = Path(folder)
    cache: dict[str, ExternalFile] = {}
    for tensor, where in found:
        try:
            _check(tensor, base, cache)
        except _Problem as problem:
            raise _failure(tensor, where, problem) from None
    return tuple(cache.values())


def read_external_bytes(tensor: TensorProto, folder: str | os.PathLike,
                        max_bytes: int) -> bytes:
    """The bytes of one small external tensor, read from its validated file.

    The reference is validated again, the file opened without following
    symlinks and without blocking (``O_PATH``, then a reopen of that very
    inode), checked to be the regular file that was validated, and at most
    ``max_bytes`` are read. A tensor whose declared length exceeds
    ``max_bytes`` is refused before anything is opened.
    """
    base = Path(folder)
    try:
        if not is_external(tensor):
            raise _Problem("the tensor is not stored as external data", UserError)
        reference = _check(tensor, base, {})
        if reference.length > max_bytes:
            raise _Problem(f"length {reference.length} is more than the {max_bytes} bytes "
                           "this tool reads from external data")
        parts = location_parts(reference.file.location)
        try:
            fd, info = _fs.open_in_folder(base, parts)
        except _fs.NotRegular as err:
            raise _Problem(f"location {_quote(reference.file.location)} became "
                           f"{_fs.describe_kind(err.mode)}") from None
        except OSError as err:
            raise _Problem(f"location {_quote(reference.file.location)} cannot be opened "
                           f"({err.strerror})") from None
        try:
            if (info.st_dev, info.st_ino) != reference.file.identity:
                raise _Problem(f"location {_quote(reference.file.location)} was replaced "
                               "after it was validated")
            try:
                return bytes(_fs.read_exactly(fd, reference.length, reference.offset))
            except EOFError:
                raise _Problem(f"{_quote(reference.file.location)} is shorter than "
                               "declared", UserError) from None
        finally:
            os.close(fd)
    except _Problem as problem:
        raise _failure(tensor, f"in {printable(os.fspath(folder), 300)}", problem) from None
