"""The optional Keras stack (TensorFlow, Keras 3, tf2onnx): imported lazily, quietly.

Everything Keras-related in this package reaches TensorFlow through
:func:`import_keras_stack`, so importing the converters stays cheap and a
missing extra is one line naming it. The opset range the converter accepts
lives here too (it is a property of the installed tf2onnx and our function body).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from types import ModuleType

from ..errors import MissingDependency, UsageError, UserError

#: The pip extra that brings TensorFlow, Keras and tf2onnx.
KERAS_EXTRA = "spatialdrop-onnx[keras]"
#: Default-domain opsets accepted: the function body needs 15, tf2onnx 1.17 knows up to 18.
MIN_OPSET = 15
MAX_OPSET = 18
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class KerasStack:
    """The lazily imported optional modules."""

    tf: ModuleType
    keras: ModuleType
    tf2onnx: ModuleType


def import_keras_stack() -> KerasStack:
    """Import TensorFlow, Keras 3 and tf2onnx quietly, or raise a UserError naming the extra."""
    # TensorFlow's C++ logging is read once, at import: set it before.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
        import tensorflow as tf
        import tf2onnx
    except ImportError as err:
        raise MissingDependency(
            f"converting Keras models needs TensorFlow, Keras 3 and tf2onnx ({err}); "
            f"install them with: pip install '{KERAS_EXTRA}'"
        ) from None
    if not keras.__version__.startswith("3."):
        raise UserError(f"Keras 3 is required, found Keras {keras.__version__}")
    tf.get_logger().setLevel(logging.ERROR)
    # tf2onnx logs every unsupported op (ERROR) and freezing retry (WARNING);
    # the converter reports what matters itself.
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return KerasStack(tf=tf, keras=keras, tf2onnx=tf2onnx)


def check_opset(opset: int) -> int:
    """The default-domain opset, if the function body and tf2onnx both support it."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
                         f"(the SpatialDropout function body needs >= {MIN_OPSET}, "
                         f"tf2onnx knows up to {MAX_OPSET})")
    return opset


#: Keras' header line before the real reason of an exception raised inside a layer.
_KERAS_CALL_HEADER = re.compile(r"Exception encountered when calling .*\.")
_KERAS_ARGUMENTS = "Arguments received by"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
#: Longest message :func:`first_line` keeps whole (the CLI prints up to 2000 characters).
MESSAGE_LIMIT = 1000


def first_line(err: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """An exception's message as one line (its class name if empty), with its reason.

    The first line; a first line ending in ``:``, or Keras' ``Exception encountered
    when calling X.call().``, announces the reason on the next line, which is
    joined to it (terminal colour codes removed). TensorFlow and tf2onnx put the reason
    last (``… Status Message: <why>``), so a line over ``limit`` keeps its head
    and its tail and loses the middle (:func:`shorten_middle`).
    """
    message = _ANSI_ESCAPE.sub("", str(err))
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return err.__class__.__name__
    text, rest = lines[0], lines[1:]
    while rest and (text.endswith(":") or _KERAS_CALL_HEADER.fullmatch(lines[0])) and \
            not rest[0].startswith(_KERAS_ARGUMENTS):
        text = f"{text} {rest.pop(0)}"
        if not text.endswith(":"):
            break
    return shorten_middle(text, limit)


def shorten_middle(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters by dropping its middle: the head says what
    failed, the tail why."""
    if len(text) <= limit:
        return text
    marker = " ... "
    head = max(0, (limit - len(marker)) // 3)
    tail = max(0, limit - len(marker) - head)
    return text[:head] + marker + (text[-tail:] if tail else "")
