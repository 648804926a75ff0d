"""The optional Keras stack (TensorFlow, Keras 3, tf2onnx): imported lazily, quietly.

Everything Keras-related in this package reaches TensorFlow through
:func:`import_keras_stack`, so importing the converters stays cheap and a
missing extra is one line naming it. The opset range the converter accepts
lives here too (it is a property of the installed tf2onnx and our function body).
"""

from __future__ import annotations

import logging
import os
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


def first_line(err: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its class name if empty), cut to ``limit``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
