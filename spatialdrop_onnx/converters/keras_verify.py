"""The checks a converted model passes before it is written.

Structure: ``onnx.checker`` full check, no TensorFlow op left, and the
promises of each mode (one ``training_mode`` input and function bodies, or,
stripped, no dropout at all). Numbers: run in onnxruntime on a small sample
batch, the model must reproduce Keras' inference output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from .. import spec
from ..errors import UserError
from ..graph import TRAINING_MODE, iter_nodes
from .keras_export import unconverted_nodes
from .keras_input import SavedModelFunction
from .keras_stack import KerasStack, first_line

#: Largest accepted |ONNX - Keras| on the self-check batch, relative to max(1, |Keras|).
VERIFY_TOLERANCE = 1e-4


class VerificationMismatch(UserError):
    """The converted model's inference output differs from Keras' (nothing is written)."""

    def __init__(self, message: str, difference: str) -> None:
        super().__init__(message)
        #: What differs, e.g. ``max abs diff 0.725`` or ``output shape (2, 3)``.
        self.difference = difference


def sample_inputs(specs: Sequence[Any], batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """A small valid batch for each traced input spec (unknown dims: batch, then 5)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor_spec in specs:
        shape = [batch if i == 0 and d is None else (5 if d is None else int(d))
                 for i, d in enumerate(tensor_spec.shape)]
        dtype = np.dtype(tensor_spec.dtype.as_numpy_dtype)
        if dtype.kind in "iu":
            # Token ids 0/1 are valid for any Embedding with a vocabulary of 2 or more.
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _keras_outputs(keras_model: Any, samples: list[np.ndarray], stack: KerasStack
                   ) -> list[np.ndarray]:
    if isinstance(keras_model, SavedModelFunction):
        return [np.asarray(v) for _, v in sorted(keras_model(*samples).items())]
    packed = samples[0] if len(samples) == 1 else stack.keras.tree.pack_sequence_as(
        keras_model.input, samples)
    return [np.asarray(v) for v in stack.keras.tree.flatten(keras_model(packed, training=False))]


def verify_against_keras(model: onnx.ModelProto, keras_model: Any, input_specs: Sequence[Any],
                         input_names: Sequence[str], stack: KerasStack) -> float:
    """Max |onnxruntime - Keras| in inference mode on a sample batch.

    Raises UserError when the model does not run, VerificationMismatch when the
    outputs differ by more than ``VERIFY_TOLERANCE`` relative to their scale.
    """
    import onnxruntime as ort

    samples = sample_inputs(input_specs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the report says what matters
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, dict(zip(input_names, samples, strict=True)))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(f"the converted model does not run in onnxruntime: "
                        f"{first_line(err)}") from None
    worst = 0.0
    for want, have in zip(_keras_outputs(keras_model, samples, stack), got, strict=True):
        if want.shape != have.shape:
            raise VerificationMismatch(f"the converted model's output shape {have.shape} "
                                       f"differs from Keras' {want.shape}",
                                       f"output shape {have.shape}, not {want.shape}")
        diff = float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64)),
                            initial=0.0))
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        if not math.isfinite(diff) or diff > VERIFY_TOLERANCE * scale:
            raise VerificationMismatch(
                f"the converted model's inference output differs from Keras by {diff:.3g} "
                f"(more than {VERIFY_TOLERANCE:g} relative to the output scale); not written",
                f"inference output off by {diff:.3g}")
        worst = max(worst, diff)
    return worst


def check_structure(model: onnx.ModelProto, strip: bool) -> None:
    """Full ONNX check, no TensorFlow op, and the structural promises of each mode."""
    left = unconverted_nodes(model)
    if left:
        raise UserError(f"internal error: TensorFlow op {left[0].op_type} left in the model")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001 - checker raises ValidationError or InferenceError
        raise UserError(f"the converted model fails onnx.checker: {first_line(err)}") from None
    custom = [n for _, n in iter_nodes(model) if n.domain == spec.DOMAIN]
    inputs = [i.name for i in model.graph.input]
    if strip and (custom or TRAINING_MODE in inputs):
        raise UserError("internal error: the stripped model still holds dropout")
    if not strip:
        if inputs.count(TRAINING_MODE) != 1:
            raise UserError(f"internal error: the model has no '{TRAINING_MODE}' input")
        defined = {(f.domain, f.name) for f in model.functions}
        if custom and (spec.DOMAIN, spec.OP_TYPE) not in defined:
            raise UserError("internal error: SpatialDropout nodes without a function body")
