"""Structural checks of dropout outputs shared by the PyTorch tests (written from the
definition of inverted dropout: a kept value is ``data / (1 - p)``, a dropped one 0)."""

from __future__ import annotations

import numpy as np


def keeps(data: np.ndarray, outputs: list[np.ndarray], p: float,
          axes: tuple[int, ...]) -> np.ndarray:
    """(runs, *noise shape) keep decisions; each shared slice must be all 0 or all data/(1-p)."""
    found = []
    for output in outputs:
        assert output.shape == data.shape
        zero = (output == 0).all(axis=axes, keepdims=True)
        kept = np.isclose(output, data / (1 - p), rtol=1e-5, atol=0).all(axis=axes,
                                                                          keepdims=True)
        mixed = int((~(zero | kept)).sum())
        assert mixed == 0, f"{mixed} shared slices are neither all dropped nor all kept"
        found.append(kept & ~zero)
    return np.stack(found)


def assert_varies_along_unshared_axes(decisions: np.ndarray, axes: tuple[int, ...]) -> None:
    """Each axis of the data not in ``axes`` has decisions that differ along it."""
    for axis in range(1, decisions.ndim):
        if axis - 1 not in axes and decisions.shape[axis] > 1:
            varies = bool((decisions != np.take(decisions, [0], axis=axis)).any())
            assert varies, f"axis {axis - 1} never varies: it is shared"
