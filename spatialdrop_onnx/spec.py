"""The SpatialDropout operator, declared once.

Everything else (schema, numpy reference, function body, native-kernel tests,
graph passes) reads its names, defaults and validation rules from here.

Interface mirrors ONNX ``Dropout``-13::

    output[, mask] = SpatialDropout(data[, ratio[, training_mode]])
        attributes: shared_axes (ints), seed (int)

One keep/drop decision is drawn per element of the *noise shape* (the data
shape with 1 at every shared axis) and broadcast over the shared axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

DOMAIN = "org.spatialdrop"
OP_TYPE = "SpatialDropout"
OPSET_VERSION = 1

INPUTS = ("data", "ratio", "training_mode")
OUTPUTS = ("output", "mask")
ATTR_SHARED_AXES = "shared_axes"
ATTR_SEED = "seed"

DEFAULT_RATIO = 0.5
DEFAULT_TRAINING_MODE = False
#: First axis of the default ``shared_axes`` (channels-first spatial dropout:
#: every axis from 2 to rank-1 is shared, as in PyTorch ``DropoutNd``).
DEFAULT_FIRST_SHARED_AXIS = 2

#: ONNX element types accepted for ``data`` and ``ratio``.
DATA_TYPES = ("tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)")
RATIO_TYPES = ("tensor(float16)", "tensor(float)", "tensor(double)")


#: What every implementation says of a node without its data input (the native
#: kernel builds the same words from OP_TYPE).
MISSING_DATA = f"{OP_TYPE} needs its data input"


class SpatialDropoutError(ValueError):
    """Invalid ratio, rank or ``shared_axes`` for SpatialDropout, or no data input."""


def default_shared_axes(rank: int) -> tuple[int, ...]:
    """``shared_axes`` used when the attribute is absent: axes 2..rank-1."""
    return tuple(range(DEFAULT_FIRST_SHARED_AXIS, rank))


def resolve_shared_axes(rank: int, shared_axes: Sequence[int] | None) -> tuple[int, ...]:
    """Normalise ``shared_axes`` for a tensor of ``rank`` to sorted non-negative axes.

    Raises SpatialDropoutError for rank 0, out-of-range or duplicated axes.
    """
    if rank < 1:
        raise SpatialDropoutError(f"SpatialDropout needs data of rank >= 1, got rank {rank}")
    if shared_axes is None:
        return default_shared_axes(rank)
    resolved = []
    for axis in shared_axes:
        axis = int(axis)
        if not -rank <= axis < rank:
            raise SpatialDropoutError(
                f"shared_axes value {axis} is out of range for data of rank {rank}"
            )
        resolved.append(axis % rank)
    if len(set(resolved)) != len(resolved):
        raise SpatialDropoutError(f"shared_axes {list(shared_axes)} names an axis twice")
    return tuple(sorted(resolved))


def noise_shape(shape: Sequence[int], shared_axes: Sequence[int] | None) -> tuple[int, ...]:
    """The mask shape: ``shape`` with 1 at every shared axis."""
    axes = resolve_shared_axes(len(shape), shared_axes)
    return tuple(1 if i in axes else int(d) for i, d in enumerate(shape))


def check_ratio(ratio: float) -> float:
    """Return ``ratio`` as a Python float, or raise if it is outside [0, 1] or NaN."""
    value = float(ratio)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise SpatialDropoutError(f"ratio must be in [0, 1], got {value}")
    return value


def kept_scale(ratio: float, dtype: np.dtype) -> np.ndarray:
    """The factor kept values are multiplied by: 1/(1-ratio), rounded to ``dtype``.

    Computed in double and rounded to nearest-even once for float16, float and
    double; for bfloat16 rounded to float first, then to bfloat16 (the native kernel
    and onnxruntime's Cast do the same). The two steps are written out here rather
    than left to a library's double -> bfloat16 cast, which has changed between
    ml_dtypes releases (0.7 rounds once, at a different value near ties).
    """
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.asarray(1.0 / (1.0 - np.float64(ratio)))
        if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
            scale = scale.astype(np.float32)
        return scale.astype(dtype)
