"""The checks a converted model passes before it is written.

Structure: ``onnx.checker`` full check, no TensorFlow op left, and the
promises of each mode (one ``training_mode`` input and function bodies, or,
stripped, no dropout at all). Numbers: run in onnxruntime on a small sample
batch, the model must reproduce Keras' inference output — to 1e-4 of the output's
scale, or, where the sample is ill-conditioned (Keras' own output moves more than
that when the inputs change by one float32 rounding step, as a deep network with
random weights does on inputs far from its training range), to 10× that movement:
no comparison can be finer than the model's own conditioning at the sample.
When Keras itself is random at inference (two calls on the same batch differ:
Monte-Carlo dropout), the comparison is statistical: means and deviations over
many runs of Keras and of the ONNX model with those layers' dropout on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .. import spec
from ..errors import UserError, printable
from ..graph import TRAINING_MODE, iter_nodes
from ..reports import JsonReport
from ..sessions import inference_session
from .keras_attribution import layer_of_node, owner
from .keras_export import unconverted_nodes
from .keras_input import SavedModelFunction
from .keras_probe import random_at_inference
from .keras_stack import KerasStack, first_line
from .keras_trace import pack_inputs

#: Largest accepted |ONNX - Keras| on the self-check batch, relative to max(1, |Keras|).
VERIFY_TOLERANCE = 1e-4
#: On an ill-conditioned sample: accepted |ONNX - Keras| relative to Keras' own movement
#: when every float input changes by about one rounding step.
SENSITIVITY_FACTOR = 10.0


@dataclass(frozen=True)
class RandomCheck(JsonReport):
    """The statistical self-check of a model whose Keras output is random at inference."""

    layers: tuple[str, ...]
    """Layers drawing random numbers with ``training=False`` (e.g. Monte-Carlo dropout)."""
    keras_spread: float
    """Max |difference| between two Keras inference calls on the same batch."""
    runs: int
    mean_abs_z: float
    """Mean over the random output elements of |mean difference| / its standard error."""
    std_ratio: float
    """Median over the random output elements of ONNX / Keras standard deviation."""


@dataclass(frozen=True)
class Verification:
    """The numerical self-check of a converted model."""

    max_diff: float
    """Max |onnxruntime - Keras| over the outputs, in inference mode (with ``random``:
    the largest difference of the means over the runs)."""
    sensitivity: float = 0.0
    """Keras' own movement under a one-ulp change of the inputs, where it had to be
    measured (an output beyond the plain tolerance); 0 otherwise."""
    random: RandomCheck | None = None
    """Set when Keras' own inference output is random: the comparison was statistical."""

    def warnings(self) -> list[str]:
        """What the report must say about how the output was checked."""
        found = []
        if self.sensitivity:
            found.append(
                f"the self-check batch is ill-conditioned: Keras' own output moves by "
                f"{self.sensitivity:.3g} when the inputs change by one float32 rounding "
                f"step, so the ONNX output (max abs diff {self.max_diff:.3g}) was "
                f"accepted within {SENSITIVITY_FACTOR:g}x that movement")
        if self.random is not None:
            check = self.random
            names = ", ".join(f"'{printable(p)}'" for p in check.layers) or "(no layer)"
            found.append(
                f"Keras' own output is random at inference (two predict calls differ by "
                f"{check.keras_spread:.3g}): layer(s) {names} draw random numbers even with "
                f"training=False (Monte-Carlo dropout); the ONNX model draws them only with "
                f"'{TRAINING_MODE}' true, so run it that way to reproduce Keras. Compared "
                f"statistically over {check.runs} runs, those layers random in ONNX: mean "
                f"|z| {check.mean_abs_z:.2f}, std ratio {check.std_ratio:.2f}")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The ``self_check`` entry of the ``--json`` report."""
        method = "statistical" if self.random else (
            "ill-conditioned" if self.sensitivity else "exact")
        return {"method": method, "max_abs_diff": self.max_diff,
                "sensitivity": self.sensitivity or None,
                "random": None if self.random is None else self.random.to_dict()}


class VerificationMismatch(UserError):
    """The converted model's inference output differs from Keras' (nothing is written)."""

    def __init__(self, message: str, difference: str = "") -> None:
        super().__init__(message)
        #: What differs, e.g. ``max abs diff 0.725`` or ``output shape (2, 3)``.
        #: (Optional: ``errors.prefixed_with`` re-raises the class with the message only.)
        self.difference = difference or message


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
    packed = pack_inputs(keras_model, samples, stack.keras)
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


def _session(model: onnx.ModelProto) -> Any:
    """A session that keeps ONNX Dropout and draws each run afresh (``inference_session``),
    on the function bodies: the check runs where the kernel is not built."""
    return inference_session(model, native=False)


def verify_against_keras(model: onnx.ModelProto, keras_model: Any, input_specs: Sequence[Any],
                         input_names: Sequence[str], stack: KerasStack,
                         scopes: Mapping[str, str] | None = None) -> Verification:
    """Max |onnxruntime - Keras| in inference mode on a sample batch.

    Raises UserError when the model does not run, VerificationMismatch when the
    outputs differ by more than ``VERIFY_TOLERANCE`` relative to their scale and
    by more than ``SENSITIVITY_FACTOR`` times Keras' own movement under a one-ulp
    change of the inputs. When Keras' own inference output is random (two calls
    differ), the comparison is statistical instead (:func:`_verify_random`);
    ``scopes`` (TensorFlow name scope → layer path) then tells which ONNX dropout
    nodes belong to the layers that are random at inference.
    """
    samples = sample_inputs(input_specs)
    try:
        got = _session(model).run(None, dict(zip(input_names, samples, strict=True)))
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
        if not accepted and wobbled is None:
            # Is Keras itself random at inference? Then no single run can be matched.
            again = _keras_outputs(keras_model, samples, stack)
            spread = max(_max_abs_diff(a, b) for a, b in zip(wanted, again, strict=True))
            if spread > 0 or not math.isfinite(spread):
                return _verify_random(model, keras_model, samples, input_names, stack,
                                      scopes, spread)
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


#: Keras and onnxruntime runs compared when Keras' inference output is random.
RANDOM_RUNS = 32
#: Largest accepted mean |z| of the output means (equal distributions: about 0.8).
RANDOM_MAX_MEAN_Z = 1.6
#: Accepted range of the median ONNX / Keras standard deviation per output element.
RANDOM_STD_RATIO = (0.6, 1.6)
_VERIFY_OFF = "spatialdrop_verify_training_off"


def _verify_random(model: onnx.ModelProto, keras_model: Any, samples: list[np.ndarray],
                   input_names: Sequence[str], stack: KerasStack,
                   scopes: Mapping[str, str] | None, spread: float) -> Verification:
    """Compare a model whose Keras inference output is random, statistically.

    The layers random at inference (:func:`.keras_probe.random_at_inference`)
    are random in the ONNX model with ``training_mode`` true; every other
    dropout node is switched off in a copy (its ``training_mode`` operand a
    constant false), so the copy draws what Keras draws. Over ``RANDOM_RUNS``
    runs the output means must agree within their standard errors (mean |z|)
    and the spreads alike (median std ratio); deterministic elements exactly.
    """
    if TRAINING_MODE not in {i.name for i in model.graph.input}:
        raise VerificationMismatch(
            f"Keras' own inference output is random (two calls differ by {spread:.3g}: a "
            "layer draws random numbers even with training=False, e.g. Monte-Carlo dropout); "
            "a stripped model cannot reproduce it: convert without --strip and run it with "
            f"'{TRAINING_MODE}' true", f"Keras random at inference ({spread:.3g})")
    layers: list[str] = []
    if isinstance(keras_model, SavedModelFunction) or scopes is None:
        variant = model  # nothing to attribute nodes with: every dropout on
    else:
        layers = random_at_inference(keras_model, stack)
        variant = _only_layers_random(model, scopes, layers)
    session = _session(variant)
    feeds = dict(zip(input_names, samples, strict=True))
    feeds[TRAINING_MODE] = np.array(True)
    onnx_runs = [session.run(None, feeds) for _ in range(RANDOM_RUNS)]
    keras_runs = [_keras_outputs(keras_model, samples, stack) for _ in range(RANDOM_RUNS)]
    worst, z_values, ratios = 0.0, [], []
    for index in range(len(onnx_runs[0])):
        have = np.stack([run[index] for run in onnx_runs]).astype(np.float64)
        want = np.stack([run[index] for run in keras_runs]).astype(np.float64)
        if have.shape != want.shape:
            raise VerificationMismatch(f"the converted model's output shape {have.shape[1:]} "
                                       f"differs from Keras' {want.shape[1:]}",
                                       f"output shape {have.shape[1:]}")
        difference = np.abs(have.mean(0) - want.mean(0))
        worst = max(worst, float(np.max(difference, initial=0.0)))
        var_have, var_want = have.var(0, ddof=1), want.var(0, ddof=1)
        random = (var_have + var_want) > 0
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        if np.any(difference[~random] > VERIFY_TOLERANCE * scale):
            raise VerificationMismatch(
                "the converted model's output differs from Keras where neither is random "
                f"(by {float(np.max(difference[~random])):.3g}); not written",
                f"non-random output off by {float(np.max(difference[~random])):.3g}")
        error = np.sqrt((var_have + var_want)[random] / RANDOM_RUNS)
        z_values.append(difference[random] / error)
        both = random & (var_want > 0)
        ratios.append(np.sqrt(var_have[both] / var_want[both]))
    z = np.concatenate(z_values) if z_values else np.zeros(0)
    ratio = np.concatenate(ratios) if ratios else np.zeros(0)
    mean_z = float(z.mean()) if z.size else 0.0
    std_ratio = float(np.median(ratio)) if ratio.size else 0.0
    low, high = RANDOM_STD_RATIO
    if not (math.isfinite(mean_z) and mean_z <= RANDOM_MAX_MEAN_Z and low <= std_ratio <= high):
        raise VerificationMismatch(
            f"Keras' own inference output is random (two calls differ by {spread:.3g}), and "
            f"the converted model's training-mode output does not match it statistically "
            f"over {RANDOM_RUNS} runs (mean |z| {mean_z:.2f}, std ratio {std_ratio:.2f}); "
            "not written", f"random output off (mean |z| {mean_z:.2f}, std ratio "
            f"{std_ratio:.2f})")
    return Verification(worst, random=RandomCheck(tuple(layers), spread, RANDOM_RUNS,
                                                  mean_z, std_ratio))


def _only_layers_random(model: onnx.ModelProto, scopes: Mapping[str, str],
                        layers: Sequence[str]) -> onnx.ModelProto:
    """A copy whose dropout nodes outside ``layers`` read a constant false training flag."""
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    paths = {path: path for path in layers}
    for _, node in iter_nodes(variant):
        dropout = (node.op_type == "Dropout" and node.domain in ("", "ai.onnx")) or \
            (node.op_type == spec.OP_TYPE and node.domain == spec.DOMAIN)
        if dropout and len(node.input) > 2 and node.input[2] == TRAINING_MODE and \
                owner(layer_of_node(node, scopes), paths) is None:
            node.input[2] = _VERIFY_OFF
    variant.graph.initializer.append(onnx.numpy_helper.from_array(np.array(False), _VERIFY_OFF))
    return variant


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
