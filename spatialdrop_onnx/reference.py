"""Numpy reference for SpatialDropout, and an ``onnx.reference`` op.

Random stream (the native kernel reproduces it bit for bit):

* generator: Philox4x64-10, numpy's ``np.random.Philox``;
* key: ``seed`` as an unsigned 64-bit integer (second key word 0);
* counter: ``call_index << 128``, i.e. the call index in the third 64-bit
  word of the 256-bit counter, so every call owns 2**128 blocks and two calls
  never share a block (``counter=call_index`` in the low word would make call
  k+1's stream call k's shifted by one block);
* one 64-bit word per noise-shape element, in C order, mapped to a double
  ``u = (word >> 11) * 2**-53``; the element is kept iff ``u >= ratio``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
from onnx.reference.op_run import OpRun

from . import spec

CALL_INDEX_SHIFT = 128
_UINT64_MASK = (1 << 64) - 1
_DATA_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64),
                np.dtype(ml_dtypes.bfloat16))


def philox_uniform(seed: int, call_index: int, count: int) -> np.ndarray:
    """``count`` doubles in [0, 1) from the stream of (seed, call_index)."""
    if call_index < 0:
        raise spec.SpatialDropoutError(f"call_index must be >= 0, got {call_index}")
    bit_generator = np.random.Philox(key=int(seed) & _UINT64_MASK,
                                     counter=int(call_index) << CALL_INDEX_SHIFT)
    return np.random.Generator(bit_generator).random(count)


def keep_mask(noise: Sequence[int], ratio: float, seed: int | None, call_index: int) -> np.ndarray:
    """Boolean keep decisions of shape ``noise``, each kept with probability 1 - ratio."""
    count = int(np.prod(noise, dtype=np.int64))
    if seed is None:
        uniform = np.random.Generator(np.random.Philox()).random(count)
    else:
        uniform = philox_uniform(seed, call_index, count)
    return (uniform >= ratio).reshape(noise)


def _check_data(data: np.ndarray) -> None:
    if data.dtype not in _DATA_DTYPES:
        raise spec.SpatialDropoutError(
            f"SpatialDropout data must be float16, float, double or bfloat16, got {data.dtype}"
        )


def spatial_dropout(
    data: np.ndarray,
    ratio: float = spec.DEFAULT_RATIO,
    training_mode: bool = spec.DEFAULT_TRAINING_MODE,
    shared_axes: Sequence[int] | None = None,
    seed: int | None = None,
    call_index: int = 0,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Apply SpatialDropout to ``data``; see :mod:`spatialdrop_onnx.spec` for the semantics.

    With ``seed`` set the mask is a pure function of (seed, call_index, noise
    shape). Returns ``output`` or, with ``return_mask``, ``(output, mask)``.
    """
    if data is None:
        raise spec.SpatialDropoutError(spec.MISSING_DATA)
    data = np.asarray(data)
    _check_data(data)
    ratio = spec.check_ratio(ratio)
    noise = spec.noise_shape(data.shape, shared_axes)
    if not bool(training_mode) or ratio == 0.0:
        output, mask = data.copy(), np.ones(noise, dtype=bool)
    else:
        mask = keep_mask(noise, ratio, seed, call_index)
        scaled = data * spec.kept_scale(ratio, data.dtype)
        output = np.where(mask, scaled, np.zeros((), data.dtype)).astype(data.dtype)
    return (output, mask) if return_mask else output


class SpatialDropout(OpRun):
    """``onnx.reference`` implementation: ``ReferenceEvaluator(m, new_ops=[SpatialDropout])``.

    A seeded node counts its own runs, so run k reproduces ``call_index=k`` as
    the native kernel does.
    """

    op_domain = spec.DOMAIN

    def __init__(self, onnx_node, run_params):  # noqa: ANN001 - OpRun's signature
        super().__init__(onnx_node, run_params)
        self._calls = 0

    def _run(self, data=None, ratio=None, training_mode=None,  # noqa: ANN001
             shared_axes=None, seed=None):  # noqa: ANN001
        if data is None:  # the node omits its data input ("" or no input at all)
            raise spec.SpatialDropoutError(spec.MISSING_DATA)
        call_index, self._calls = self._calls, self._calls + 1
        output, mask = spatial_dropout(
            data,
            ratio=spec.DEFAULT_RATIO if ratio is None else float(np.asarray(ratio)),
            training_mode=spec.DEFAULT_TRAINING_MODE if training_mode is None
            else bool(np.asarray(training_mode)),
            shared_axes=None if shared_axes is None else list(shared_axes),
            seed=seed,
            call_index=call_index,
            return_mask=True,
        )
        return (output, mask) if len(self.onnx_node.output) > 1 else (output,)
