"""The ratio written by rewrite is the framework's own rate, not its float32 shadow."""

import numpy as np
import pytest

from spatialdrop_onnx.passes.rules._common import framework_ratio


@pytest.mark.parametrize("rate", [0.45, 0.2, 0.3, 0.1, 0.5, 0.05, 0.9])
def test_recovers_the_decimal_rate_from_float32(rate):
    exported = float(np.float32(rate))          # what tf2onnx / torch write
    recovered = framework_ratio(exported)
    assert recovered == rate
    # Keras and PyTorch scale by float32(1/(1-rate)) computed in double from the rate.
    assert np.float32(1 / (1 - recovered)) == np.float32(1 / (1 - rate))


@pytest.mark.parametrize(("keep", "rate"), [(0.7, 0.3), (0.8, 0.2), (0.9, 0.1), (0.55, 0.45)])
def test_keep_probability_form_recovers_too(keep, rate):
    """PyTorch (Dropout2d's 1-p, DropPath's keep) writes the keep probability as float32."""
    assert framework_ratio(1.0 - float(np.float32(keep))) == rate
