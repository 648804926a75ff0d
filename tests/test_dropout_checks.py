"""The statistical checks of ``dropout_checks`` accept what they must and refuse the rest:
synthetic runs of an element-wise dropout (each element x·2 or 0, kept with probability p)."""

from __future__ import annotations

import numpy as np
import pytest
from dropout_checks import assert_same_distribution

RUNS, ELEMENTS = 48, 500


def _runs(seed: int, keep: float = 0.5, scale: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.5, 1.5, ELEMENTS)
    return (rng.random((RUNS, ELEMENTS)) < keep) * x * scale


def test_the_same_dropout_passes_for_every_seed():
    for seed in range(40):
        assert_same_distribution(_runs(2 * seed), _runs(2 * seed + 1), f"seed {seed}")


# What it is for: a runtime that hardly drops, scales wrong, freezes or shares masks. (With
# some 50 runs it cannot tell a rate of 0.4 from 0.5 per element: the drop-fraction checks on
# the op's structure do that.)
@pytest.mark.parametrize(("other", "what"), [
    (lambda: _runs(1, keep=0.8), "a drop rate of 0.2 instead of 0.5"),
    (lambda: _runs(1, keep=0.5, scale=3.0), "a scale of 3 instead of 2"),
    (lambda: 1.0 + (_runs(1) - 1.0) * 0.5, "half the spread"),
    (lambda: np.repeat(_runs(1)[:1], RUNS, axis=0), "one mask for every run"),
])
def test_a_different_dropout_fails(other, what):
    with pytest.raises(AssertionError):
        assert_same_distribution(other(), _runs(0), what)


def test_single_elements_far_off():
    """One element at 5 sd (a rare mask pattern in a correct run) passes; one at 9 sd, or
    2 % of them at 5 sd, fail."""
    ours, got = _runs(0), _runs(1)
    spread = np.sqrt((got.std(0) ** 2 + ours.std(0) ** 2) / RUNS)

    def moved(columns: list[int], sds: float) -> np.ndarray:
        shifted = got.copy()
        for column in columns:
            shifted[:, column] += ours[:, column].mean() - got[:, column].mean() + \
                sds * spread[column]
        return shifted

    assert_same_distribution(moved([7], 5.0), ours, "one element at 5 sd")
    for columns, sds in (([7], 9.0), (list(range(0, ELEMENTS, 50)), 5.0)):
        with pytest.raises(AssertionError):
            assert_same_distribution(moved(columns, sds), ours, f"{len(columns)} at {sds} sd")
