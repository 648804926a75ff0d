"""Refuse a ``.keras`` archive that would inflate beyond a sane bound, before extraction.

A ``.keras`` file is a zip archive that Keras reads member by member (the
``config.json`` whole, into memory). A zip bomb — a few MB of deflated zeros
declaring gigabytes — made ``convert`` allocate 4.6 GB for a 2 GiB
``config.json``; Keras itself refuses members only above 4 GiB.

:func:`check_keras_archive` reads the zip's central directory only (nothing is
decompressed) and refuses, with a one-line
:class:`~spatialdrop_onnx.errors.RefusedError` (exit code 4), an archive

* whose members declare more than :data:`MAX_TOTAL_BYTES` (2 GiB) in all;
* whose members declare more than :data:`MAX_RATIO` (64) times the archive's
  size in all, once past :data:`RATIO_FLOOR_BYTES` (64 MiB: small archives of
  very compressible data stay fine);
* with a member declaring more than :data:`RATIO_FLOOR_BYTES` and more than
  :data:`MAX_RATIO` times its own compressed size (a bomb hidden next to
  incompressible padding);
* with more than :data:`MAX_MEMBERS` members.

Python's ``zipfile`` (which Keras uses) never inflates a member past its
declared size (it stops there and fails the CRC check), so the declared sizes
bound what loading can allocate.
"""

from __future__ import annotations

import os
import zipfile
from typing import BinaryIO

from ..errors import RefusedError, printable
from ..modelio import open_input

#: Most bytes the members of an archive may declare in all.
MAX_TOTAL_BYTES = 2 * 1024**3
#: Most declared bytes per archive byte (in all), and per compressed byte (per member).
MAX_RATIO = 64
#: Below this many declared bytes the ratios are not checked.
RATIO_FLOOR_BYTES = 64 * 1024**2
#: Most members an archive may have (a Keras archive has three, plus any assets).
MAX_MEMBERS = 10_000


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_keras_archive(path: str | os.PathLike, *, handle: BinaryIO | None = None,
                        size: int | None = None) -> None:
    """Refuse the zip archive at ``path`` if its members would inflate beyond the bounds
    (see the module docstring). Reads the central directory only, from ``handle``
    (an open binary file of ``size`` bytes) or else from ``path`` opened with
    :func:`~spatialdrop_onnx.modelio.open_input` (a FIFO or device is refused, exit 3).
    A file that is not a zip archive is left to the caller's own checks."""
    label = printable(os.fspath(path))
    if handle is None:
        fd, info = open_input(path, expected="a Keras model")
        with os.fdopen(fd, "rb") as opened:
            check_keras_archive(path, handle=opened, size=info.st_size)
        return
    archive_size = size if size is not None else os.fstat(handle.fileno()).st_size
    try:
        with zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return
    if len(members) > MAX_MEMBERS:
        raise RefusedError(f"{label}: refusing to load a .keras archive of {len(members)} "
                           f"members (at most {MAX_MEMBERS})")
    total = sum(member.file_size for member in members)
    limit = min(MAX_TOTAL_BYTES, max(MAX_RATIO * archive_size, RATIO_FLOOR_BYTES))
    if total > limit:
        reason = (f"more than {_size(MAX_TOTAL_BYTES)}" if total > MAX_TOTAL_BYTES else
                  f"{total / max(archive_size, 1):.0f} times its {_size(archive_size)}")
        raise RefusedError(f"{label}: refusing to load a .keras archive whose members would "
                           f"inflate to {_size(total)} ({reason}); a zip bomb is not a model")
    for member in members:
        if member.file_size > RATIO_FLOOR_BYTES and \
                member.file_size > MAX_RATIO * max(member.compress_size, 1):
            raise RefusedError(
                f"{label}: refusing to load a .keras archive whose member "
                f"{printable(member.filename)!r} would inflate from "
                f"{_size(member.compress_size)} to {_size(member.file_size)} (more than "
                f"{MAX_RATIO} times); a zip bomb is not a model")
