"""Structural and statistical checks for any SpatialDropout implementation.

Written from the op's definition, not from the code under test: the expected
kept value is ``data * T(1/(1-ratio))`` in T's own arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_dtypes
import numpy as np

DTYPES = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def sample_data(shape: Sequence[int], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Values in [1, 2): never zero, so a dropped element is recognisable."""
    return (np.random.default_rng(seed).random(shape) + 1.0).astype(dtype)


def noise_shape_of(shape: Sequence[int], shared_axes: Sequence[int] | None) -> tuple[int, ...]:
    """The mask shape written from the definition (default: axes 2..rank-1 shared)."""
    rank = len(shape)
    axes = range(2, rank) if shared_axes is None else [a % rank for a in shared_axes]
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def expected_kept(data: np.ndarray, ratio: float) -> np.ndarray:
    scale = np.asarray(1.0 / (1.0 - ratio)).astype(data.dtype)
    return (data * scale).astype(data.dtype)


def assert_structurally_valid(
    data: np.ndarray,
    output: np.ndarray,
    ratio: float,
    shared_axes: Sequence[int] | None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Each noise slice is all dropped or exactly scaled, the mask agrees; returns the keeps."""
    assert output.dtype == data.dtype and output.shape == data.shape
    noise = noise_shape_of(data.shape, shared_axes)
    kept = expected_kept(data, ratio)
    reduce_axes = tuple(i for i, n in enumerate(noise) if n == 1 and data.shape[i] != 1)
    is_zero = (output == 0).all(axis=reduce_axes, keepdims=True)
    is_kept = (output == kept).all(axis=reduce_axes, keepdims=True)
    assert np.all(is_zero | is_kept), "a shared slice is neither all dropped nor exactly scaled"
    keep = is_kept & ~is_zero if ratio < 1 else np.zeros(noise, bool)
    keep = np.broadcast_to(keep, noise)
    if mask is not None:
        assert mask.dtype == np.bool_ and mask.shape == noise, (mask.dtype, mask.shape, noise)
        np.testing.assert_array_equal(mask, keep)
    return keep


def assert_identity(data: np.ndarray, output: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Training off (or ratio 0): output bit-equal to data, mask all true."""
    assert output.dtype == data.dtype
    np.testing.assert_array_equal(output.view(np.uint8), data.view(np.uint8))
    if mask is not None:
        assert mask.all()


def assert_drop_fraction(keep: np.ndarray, ratio: float, sigmas: float = 4.0) -> None:
    """Dropped fraction within ``sigmas`` binomial standard deviations of ``ratio``."""
    n = keep.size
    dropped = n - int(keep.sum())
    sd = math.sqrt(n * ratio * (1 - ratio))
    assert abs(dropped - n * ratio) <= sigmas * sd + 1e-9, (
        f"dropped {dropped}/{n}, expected {n * ratio:.1f} ± {sigmas * sd:.1f}"
    )


def assert_same_distribution(got: np.ndarray, ours: np.ndarray, label: str) -> None:
    """Two stacks of runs [R, ...] of one random output come from one distribution (two
    runtimes, or a runtime and Keras).

    Per element, the difference of the two means over its standard error is about N(0, 1)
    when they agree: at most one element or 1 % beyond 4 (under N(0, 1): 0.006 %), none
    beyond 8. Not a bound of 5 on the largest: an element that a rare mask pattern moves has a
    skewed spread over some 50 runs, and the largest of some 500 such z reached 5.14 in a correct
    run (typically 2.5-4). Not a band on the mean |z| either: the elements of a sequence
    share masks, so it wanders more than independent ones would (a ±0.2 band around
    sqrt(2/pi) failed one run in a few).
    A wrong drop rate or scale moves most elements; the tract state bug gave z up to 47.
    The spreads agree too (identical gate masks showed as 0.53x).
    """
    runs = got.shape[0]
    std_got, std_ours = got.std(0), ours.std(0)
    varying = (std_got > 1e-4) & (std_ours > 1e-4)
    assert varying.mean() > 0.3, f"{label}: the output hardly varies from run to run"
    z = (got.mean(0) - ours.mean(0))[varying] / np.sqrt(
        (std_got**2 + std_ours**2)[varying] / runs)
    beyond = int(np.sum(np.abs(z) > 4))
    assert beyond <= max(1, 0.01 * z.size), f"{label}: {beyond} of {z.size} means beyond 4 sd"
    assert float(np.max(np.abs(z))) < 8, label
    assert 0.8 < float(np.median(std_got[varying] / std_ours[varying])) < 1.25, label
