"""The ``spatialdrop-onnx`` command line: ``app`` (a click group) and ``main`` (the entry point).

``main`` imports the commands (and with them onnx, onnxruntime, numpy, ...) only when
it runs, with Ctrl-C held back until they are imported: an interrupt during
start-up is one line and exit 130, never a traceback (a KeyboardInterrupt raised
inside a C extension's import would be printed by it and turned into ImportError).
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see :func:`spatialdrop_onnx.cli.group.main`)."""
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from .group import main as run
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("spatialdrop-onnx: interrupted", file=sys.stderr)
        return 130
    return run(argv)


def __getattr__(name: str) -> object:
    if name == "app":
        from .group import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
