"""Helpers for the native-kernel tests: require the library, run bfloat16 bit-exactly."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from optional import in_ci

import spatialdrop_onnx as sd
from spatialdrop_onnx.native import NativeLibraryMissing

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def require_native() -> str:
    """The library path; a missing library fails in CI and skips elsewhere."""
    try:
        return sd.get_library_path()
    except NativeLibraryMissing as err:
        if in_ci():
            pytest.fail(f"the native kernel must be built in CI: {err}")
        pytest.skip(str(err))


def native_options(**settings: int) -> ort.SessionOptions:
    """SessionOptions with the library registered and e.g. intra_op_num_threads set."""
    require_native()
    so = ort.SessionOptions()
    for name, value in settings.items():
        setattr(so, name, value)
    return sd.register_kernel(so)


def run(
    session: ort.InferenceSession,
    x: np.ndarray,
    ratio: float | np.ndarray = 0.5,
    training: bool = True,
) -> list[np.ndarray]:
    """Run a dropout_model session; bfloat16 data travels as raw bits through OrtValues
    (onnxruntime's Python API has no bfloat16 arrays), so nothing is rounded on the way."""
    ratio = ratio if isinstance(ratio, np.ndarray) else np.array(ratio, np.float64)
    feeds = {"x": x, "ratio": ratio, "training_mode": np.array(training)}
    if x.dtype != BFLOAT16:
        return session.run(None, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        if name == "x":
            value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.ascontiguousarray(x).view(np.uint16), TensorProto.BFLOAT16)
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, value)
    y_bits = np.empty(x.shape, np.uint16)
    y_value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(y_bits, TensorProto.BFLOAT16)
    binding.bind_ortvalue_output("y", y_value)
    names = [o.name for o in session.get_outputs()]
    for name in names[1:]:
        binding.bind_output(name)
    session.run_with_iobinding(binding)
    outputs = binding.get_outputs()
    return [y_bits.view(BFLOAT16)] + [o.numpy() for o in outputs[1:]]


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and bytes (so -0 vs +0 and NaN payloads count)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if not np.array_equal(actual.view(np.uint8), expected.view(np.uint8)):
        bits = actual.view(f"u{actual.itemsize}") if actual.size else actual
        ref = expected.view(f"u{expected.itemsize}") if expected.size else expected
        bad = np.flatnonzero(bits.ravel() != ref.ravel())
        raise AssertionError(f"{bad.size} of {actual.size} elements differ; first at {bad[:5]}: "
                             f"{bits.ravel()[bad[:5]]} vs {ref.ravel()[bad[:5]]}")
