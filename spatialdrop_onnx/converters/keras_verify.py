"""The checks a converted model passes before it is written.

Structure: ``onnx.checker`` full check, no TensorFlow op left, and the
promises of each mode (one ``training_mode`` input and function bodies, or,
stripped, no dropout at all). Numbers: run in onnxruntime on a small sample
batch, the model must reproduce Keras' inference output — to 1e-4 of the output's
scale, or, where the sample is ill-conditioned (Keras' own output moves more than
that when the inputs change by one float32 rounding step, as a deep network with
random weights does on inputs far from its training range), to 10× that movement:
no comparison can be finer than the model's own conditioning at the sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
#: On an ill-conditioned sample: accepted |ONNX - Keras| relative to Keras' own movement
#: when every float input changes by about one rounding step.
SENSITIVITY_FACTOR = 10.0


@dataclass(frozen=True)
class Verification:
    """The numerical self-check of a converted model."""

    max_diff: float
    """Max |onnxruntime - Keras| over the outputs, in inference mode."""
    sensitivity: float = 0.0
    """Keras' own movement under a one-ulp change of the inputs, where it had to be
    measured (an output beyond the plain tolerance); 0 otherwise."""


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


def _perturbed(samples: list[np.ndarray], seed: int = 1) -> list[np.ndarray]:
    """The samples with every float changed by about one rounding step of its type."""
    rng = np.random.default_rng(seed)
    changed = []
    for array in samples:
        if array.dtype.kind != "f":
            changed.append(array)
            continue
        step = np.finfo(array.dtype).eps
        factor = 1 + rng.uniform(-step, step, array.shape)
        changed.append((array * factor).astype(array.dtype))
    return changed


def verify_against_keras(model: onnx.ModelProto, keras_model: Any, input_specs: Sequence[Any],
                         input_names: Sequence[str], stack: KerasStack) -> Verification:
    """Max |onnxruntime - Keras| in inference mode on a sample batch.

    Raises UserError when the model does not run, VerificationMismatch when the
    outputs differ by more than ``VERIFY_TOLERANCE`` relative to their scale and
    by more than ``SENSITIVITY_FACTOR`` times Keras' own movement under a one-ulp
    change of the inputs.
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
    wanted = _keras_outputs(keras_model, samples, stack)
    wobbled: list[np.ndarray] | None = None  # Keras on perturbed inputs, measured if needed
    worst, sensitivity = 0.0, 0.0
    for index, (want, have) in enumerate(zip(wanted, got, strict=True)):
        if want.shape != have.shape:
            raise VerificationMismatch(f"the converted model's output shape {have.shape} "
                                       f"differs from Keras' {want.shape}",
                                       f"output shape {have.shape}, not {want.shape}")
        diff = _max_abs_diff(want, have)
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        accepted = math.isfinite(diff) and diff <= VERIFY_TOLERANCE * scale
        if not accepted and math.isfinite(diff):
            if wobbled is None:
                wobbled = _keras_outputs(keras_model, _perturbed(samples), stack)
            moved = _max_abs_diff(want, wobbled[index])
            accepted = math.isfinite(moved) and diff <= SENSITIVITY_FACTOR * moved
            if accepted:
                sensitivity = max(sensitivity, moved)
        if not accepted:
            raise VerificationMismatch(
                f"the converted model's inference output differs from Keras by {diff:.3g} "
                f"(more than {VERIFY_TOLERANCE:g} relative to the output scale); not written",
                f"inference output off by {diff:.3g}")
        worst = max(worst, diff)
    return Verification(worst, sensitivity)


def _max_abs_diff(want: np.ndarray, have: np.ndarray) -> float:
    return float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64)),
                        initial=0.0))


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
