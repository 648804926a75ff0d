"""The numpy reference: structure, statistics, and the random-stream contract."""

import numpy as np
import pytest
from dropout_checks import (
    DTYPES,
    assert_drop_fraction,
    assert_identity,
    assert_structurally_valid,
    sample_data,
)

from spatialdrop_onnx import reference

CASES = [  # (shape, shared_axes)
    ((6, 40), None),
    ((6, 40), []),
    ((4, 8, 10), None),
    ((4, 10, 8), [1]),            # Keras SpatialDropout1D, channels_last
    ((4, 8, 5, 5), None),         # Dropout2d / SpatialDropout2D channels_first
    ((4, 5, 5, 8), [1, 2]),       # SpatialDropout2D channels_last
    ((2, 3, 4, 4, 4), [-3, -2, -1]),
    ((3, 2, 2, 2, 2), [1, 2, 3, 4]),  # DropPath
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axes"), CASES)
def test_structure(dtype, shape, axes):
    data = sample_data(shape, DTYPES[dtype])
    for call_index in range(3):
        output, mask = reference.spatial_dropout(
            data, 0.3, True, axes, seed=11, call_index=call_index, return_mask=True)
        assert_structurally_valid(data, output, 0.3, axes, mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_off_and_ratio_zero_are_identity(dtype):
    data = sample_data((3, 4, 5), DTYPES[dtype])
    data.flat[0] = -0.0
    for ratio, training in [(0.5, False), (0.0, True), (1.0, False)]:
        output, mask = reference.spatial_dropout(data, ratio, training, seed=1, return_mask=True)
        assert_identity(data, output, mask)


def test_ratio_one_drops_everything_without_nan():
    data = sample_data((2, 3, 4), np.dtype(np.float32))
    output, mask = reference.spatial_dropout(data, 1.0, True, return_mask=True)
    assert not mask.any()
    assert (output == 0).all()


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_drop_fraction(ratio):
    data = np.ones((50, 400, 2), np.float32)
    _, mask = reference.spatial_dropout(data, ratio, True, [2], seed=5, return_mask=True)
    assert_drop_fraction(mask, ratio)


def test_seeded_mask_is_pure_function_of_seed_and_call_index():
    data = np.ones((8, 64, 3), np.float32)
    first = reference.spatial_dropout(data, 0.5, True, seed=3, call_index=4, return_mask=True)[1]
    again = reference.spatial_dropout(data, 0.5, True, seed=3, call_index=4, return_mask=True)[1]
    other_call = reference.spatial_dropout(data, 0.5, True, seed=3, call_index=5,
                                           return_mask=True)[1]
    other_seed = reference.spatial_dropout(data, 0.5, True, seed=4, call_index=4,
                                           return_mask=True)[1]
    np.testing.assert_array_equal(first, again)
    assert (first != other_call).any() and (first != other_seed).any()


def test_unseeded_masks_differ():
    data = np.ones((64, 64), np.float32)
    masks = [reference.spatial_dropout(data, 0.5, True, return_mask=True)[1] for _ in range(2)]
    assert (masks[0] != masks[1]).any()


# --- The random stream, written independently from the documented contract ---

_M0, _M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_W0, _W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
_U64 = (1 << 64) - 1


def _philox4x64_10(counter: list[int], key: list[int]) -> list[int]:
    x, k = list(counter), list(key)
    for round_ in range(10):
        p0, p1 = _M0 * x[0], _M1 * x[2]
        x = [(p1 >> 64) ^ x[1] ^ k[0], p1 & _U64, (p0 >> 64) ^ x[3] ^ k[1], p0 & _U64]
        if round_ < 9:
            k = [(k[0] + _W0) & _U64, (k[1] + _W1) & _U64]
    return x


def _contract_uniforms(seed: int, call_index: int, count: int) -> list[float]:
    """Key (seed, 0); counter words (0, 0, call_index, 0), bumped before each block."""
    counter = [0, 0, call_index, 0]
    words = []
    while len(words) < count:
        counter[0] = (counter[0] + 1) & _U64  # no carry needed for these short streams
        words += _philox4x64_10(counter, [seed & _U64, 0])
    return [(w >> 11) * 2.0**-53 for w in words[:count]]


@pytest.mark.parametrize(("seed", "call_index"),
                         [(0, 0), (1234, 0), (7, 3), (2**63 + 5, 1), (-1, 2)])
def test_stream_matches_documented_philox_layout(seed, call_index):
    expected = _contract_uniforms(seed, call_index, 11)
    np.testing.assert_array_equal(reference.philox_uniform(seed, call_index, 11), expected)


def test_consecutive_calls_are_not_shifted_copies():
    a = reference.philox_uniform(9, 0, 64)
    b = reference.philox_uniform(9, 1, 64)
    for shift in range(0, 9):
        assert not np.array_equal(a[shift:shift + 32], b[:32])
        assert not np.array_equal(b[shift:shift + 32], a[:32])


# --- Invalid input ---

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.5}, r"ratio must be in \[0, 1\]"),
    ({"ratio": -0.5}, r"ratio must be in \[0, 1\]"),
    ({"shared_axes": [3]}, "out of range"),
    ({"shared_axes": [1, 1]}, "twice"),
])
def test_invalid_arguments_refused(kwargs, message):
    data = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        reference.spatial_dropout(data, training_mode=True, **{"ratio": 0.5, **kwargs})


@pytest.mark.parametrize("data", [np.ones((2, 3), np.int32), np.array(1.0, np.float32)])
def test_invalid_data_refused(data):
    with pytest.raises(ValueError, match="float16, float, double or bfloat16|rank"):
        reference.spatial_dropout(data, 0.5, True)
