"""Keep what native libraries print on file descriptor 2 away from the user's terminal.

TensorFlow, absl and oneDNN write to fd 2 from C++ (``All log messages before
absl::InitializeLog()…``, ``oneDNN custom operations are on…``) at import and on
first use; ``TF_CPP_MIN_LOG_LEVEL`` does not stop the absl line. Python-level
redirection cannot catch them, so while a framework runs, fd 2 points at a
temporary file. Our own messages go to a duplicate of the real stderr
(``CapturedStderr.terminal``). The captured text is kept for error reports and
``--verbose``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class CapturedStderr:
    """The real stderr while fd 2 is captured, and what was captured so far."""

    terminal: TextIO
    _file: object = field(default=None, repr=False)

    def text(self) -> str:
        """Everything written to fd 2 while captured."""
        if self._file is None:
            return ""
        handle = self._file
        handle.flush()  # type: ignore[attr-defined]
        handle.seek(0)  # type: ignore[attr-defined]
        return handle.read().decode(errors="replace")  # type: ignore[attr-defined]


@contextlib.contextmanager
def captured_native_stderr(enabled: bool = True) -> Iterator[CapturedStderr]:
    """Point fd 2 at a temporary file (when ``enabled``); restore it on exit.

    ``terminal`` in the yielded object writes to the original stderr either way.
    """
    if not enabled:
        yield CapturedStderr(terminal=sys.stderr)
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    sink = tempfile.TemporaryFile()
    terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1, errors="backslashreplace")
    os.dup2(sink.fileno(), 2)
    try:
        yield CapturedStderr(terminal=terminal, _file=sink)
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        terminal.close()
        sink.close()
