"""What a command may change in its own process, and a library call may not.

The CLI owns its process, so every command runs with:

* onnx's C++ checks in a forked child with a timeout (:func:`isolation.isolated_checks`):
  an abort or a deadlock inside onnx on a malformed model becomes one line;
* a higher first threshold of Python's cyclic garbage collector (700 -> 7,000
  allocations): a pass creates hundreds of thousands of short-lived onnx_ir and
  protobuf objects, and the collections took about a fifth of a 2,000-site rewrite.
  Garbage is still collected, so peak memory does not grow.

Library calls (``spatialdrop_onnx.rewrite`` & co.) do neither: a library must not
fork its caller or retune its collector unasked. A caller who wants the same opts
in with ``with spatialdrop_onnx.cli.process.command_process(): ...``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from ..isolation import isolated_checks

#: The collector's first-generation threshold while a command runs (Python's default: 700).
COMMAND_GC_THRESHOLD = 7_000


@contextmanager
def command_process() -> Iterator[None]:
    """The process settings of one command (see the module docstring); restored after."""
    saved = gc.get_threshold()
    if saved[0] < COMMAND_GC_THRESHOLD:  # a caller's own higher setting stays
        gc.set_threshold(COMMAND_GC_THRESHOLD, *saved[1:])
    try:
        with isolated_checks():
            yield
    finally:
        gc.set_threshold(*saved)
