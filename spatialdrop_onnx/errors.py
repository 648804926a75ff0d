"""Errors a user can act on, each with the exit code the CLI reports it with.

The exit codes and their meanings are declared once, in :class:`ExitCode`
(``spatialdrop-onnx --help`` prints them from there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``spatialdrop-onnx`` command line (the same for every command)."""

    OK = 0
    USAGE = 2
    INVALID = 3
    REFUSED = 4
    PARTIAL = 5
    ENVIRONMENT = 6
    INTERRUPTED = 130  # 128 + SIGINT
    TERMINATED = 143  # 128 + SIGTERM

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.USAGE: "usage: a bad option or option value",
    ExitCode.INVALID: "invalid: the input cannot be read or handled, or the output cannot be "
                      "written",
    ExitCode.REFUSED: "refused for safety (unsafe external data, a format that can run code, "
                      "an output that would overwrite the input, its data or a non-regular file)",
    ExitCode.PARTIAL: "partial: written, but some dropout sites were left unconverted, or "
                      "(inline --unroll-loops) some Loops left (each is named)",
    ExitCode.ENVIRONMENT: "environment: an optional dependency or the native kernel is "
                          "missing, or the machine ran out of memory",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); nothing half-written is left",
    ExitCode.TERMINATED: "terminated (SIGTERM); nothing half-written is left",
}


class UserError(Exception):
    """Bad input or environment: the message is shown to the user as one line."""

    exit_code: ExitCode = ExitCode.INVALID


class UsageError(UserError):
    """A bad argument or option value."""

    exit_code = ExitCode.USAGE


class RefusedError(UserError):
    """The input or the requested output is refused for safety."""

    exit_code = ExitCode.REFUSED


class PartialResult(UserError):
    """The output was written, but some sites were left unconverted."""

    exit_code = ExitCode.PARTIAL


class MissingDependency(UserError):
    """An optional dependency or the native kernel is not installed."""

    exit_code = ExitCode.ENVIRONMENT


class OutOfMemory(UserError):
    """The machine (or the process's address-space limit) has no memory for the work."""

    exit_code = ExitCode.ENVIRONMENT


def caused_by_memory(err: BaseException) -> bool:
    """True when ``err`` or an exception it was raised from or during is a MemoryError.

    Libraries wrap it (onnx_ir raises ``SerdeError`` from the MemoryError of a graph it
    could not build): it is still the machine running out of memory, not a bad model.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def printable(text: object, limit: int = 200) -> str:
    """``text`` safe for one terminal line: control characters escaped, long text cut.

    Names inside a model are attacker-controlled: a newline would forge an extra
    error line and an escape sequence would drive the terminal.
    """
    escaped = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text))
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


@contextlib.contextmanager
def prefixed_with(path: str | os.PathLike, also: tuple[str | os.PathLike, ...] = ()
                  ) -> Iterator[None]:
    """Make every UserError raised inside start with the user's ``path``.

    Code working on protos cannot know the file it came from; the function
    handling a file wraps its work in this, so each one-line error names the
    user's file. A message that already starts with ``path`` or with one of
    ``also`` (e.g. the output path) is left as it is; the error keeps its class
    (and so its exit code).
    """
    prefix = f"{printable(os.fspath(path))}: "
    known = (prefix, *(f"{printable(os.fspath(p))}: " for p in also))
    try:
        yield
    except UserError as err:
        if str(err).startswith(known):
            raise
        raise type(err)(prefix + str(err)) from None
