"""Low-level file operations shared by reading and writing (Linux/POSIX).

Files the model names are opened without following symlinks and without
talking to devices: ``O_PATH`` first (no ``open`` reaches a driver or blocks
on a FIFO), ``fstat`` to check the kind and identity, then a reopen through
``/proc/self/fd`` that is guaranteed to reach the same inode.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_COPY_CHUNK = 8 << 20
_O_PATH = getattr(os, "O_PATH", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Flags for opening a file for reading that can neither block on a FIFO nor
#: follow a symlink in the last component.
READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY | _O_CLOEXEC


def describe_kind(mode: int) -> str:
    """'a FIFO', 'a character device'… for the error messages."""
    kinds = [
        (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


class NotRegular(OSError):
    """The path names something other than a regular file (its ``st_mode`` is kept)."""

    def __init__(self, mode: int) -> None:
        super().__init__(errno.EINVAL, describe_kind(mode))
        self.mode = mode


def open_regular(name: str | os.PathLike, *, dir_fd: int | None = None,
                 follow: bool = False) -> tuple[int, os.stat_result]:
    """Open a regular file for reading and return ``(fd, fstat)``.

    Raises :class:`NotRegular` for anything else (directory, FIFO, device,
    socket, or a symlink when ``follow`` is false) without having opened it
    for reading: the first ``open`` is ``O_PATH``.
    """
    nofollow = 0 if follow else _O_NOFOLLOW
    if _O_PATH:
        handle = os.open(name, _O_PATH | nofollow | _O_CLOEXEC, dir_fd=dir_fd)
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise NotRegular(info.st_mode)
            try:
                fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | _O_NONBLOCK | _O_NOCTTY
                             | _O_CLOEXEC)
            except FileNotFoundError:  # no /proc: open by name, then compare identities
                fd = os.open(name, READ_FLAGS & ~(_O_NOFOLLOW if follow else 0),
                             dir_fd=dir_fd)
        finally:
            os.close(handle)
    else:
        fd = os.open(name, READ_FLAGS & ~(_O_NOFOLLOW if follow else 0), dir_fd=dir_fd)
        info = None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegular(opened.st_mode)
        if info is not None and (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise OSError(errno.ESTALE, "file was replaced while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def open_folder(path: str | os.PathLike, *, dir_fd: int | None = None,
                follow: bool = True) -> int:
    """A descriptor of a folder (for ``dir_fd`` operations and ``fsync``)."""
    nofollow = 0 if follow else _O_NOFOLLOW
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | nofollow | _O_CLOEXEC, dir_fd=dir_fd)


def open_in_folder(folder: Path, parts: list[str]) -> tuple[int, os.stat_result]:
    """Open ``folder/parts...`` for reading, refusing a symlink or non-folder on the way."""
    current = open_folder(folder)
    try:
        for part in parts[:-1]:
            inner = open_folder(part, dir_fd=current, follow=False)
            os.close(current)
            current = inner
        return open_regular(parts[-1], dir_fd=current)
    finally:
        os.close(current)


def read_exactly(fd: int, size: int, offset: int = 0) -> bytearray:
    """``size`` bytes from ``fd`` at ``offset``; ``EOFError`` if the file is shorter."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise EOFError(f"file ended after {done} of {size} bytes")
        done += count
    return buffer


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:1 << 30])
        view = view[written:]


# --- Copying ------------------------------------------------------------------


def copy_out(src: int, dst: int, offset: int, length: int) -> None:
    """Append bytes [offset, offset + length) of ``src`` to ``dst`` at its file position.

    ``copy_file_range`` first (the bytes never enter this process), then
    ``pread``/``write`` in chunks; ``EOFError`` if ``src`` is shorter.
    """
    done = 0
    while done < length:
        count = min(_COPY_CHUNK, length - done)
        try:
            copied = os.copy_file_range(src, dst, count, offset + done)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise
            copied = 0
        except AttributeError:
            copied = 0
        if copied <= 0:  # not supported here, or the end of the file: pread tells which
            chunk = os.pread(src, count, offset + done)
            if not chunk:
                raise EOFError("the source file shrank while it was copied")
            write_all(dst, chunk)
            copied = len(chunk)
        done += copied


def data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the non-hole parts of a file; the whole file if holes are unknown."""
    position = 0
    try:
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, min(end, size)
            position = end
    except (AttributeError, OSError):
        if position < size:
            yield position, size


def copy_sparse(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst`` in chunks, keeping holes; no fsync."""
    for start, end in data_segments(src, size):
        os.lseek(dst, start, os.SEEK_SET)
        copy_out(src, dst, start, end - start)
    os.ftruncate(dst, size)
