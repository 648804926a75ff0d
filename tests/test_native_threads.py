"""One session run from many threads at once: no crash, every output valid, and every
run drawing its own call index (the kernel's atomic run counter)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from dropout_checks import assert_structurally_valid, sample_data
from native_helpers import native_options
from op_models import dropout_model, feeds, ort_session

from spatialdrop_onnx import reference

THREADS = 8
RUNS_PER_THREAD = 40


def _hammer(session, x, ratio):
    """All threads start together and each runs the session RUNS_PER_THREAD times."""
    barrier = threading.Barrier(THREADS)

    def worker(_: int) -> list[tuple[np.ndarray, np.ndarray]]:
        barrier.wait()
        return [tuple(session.run(None, feeds(x, ratio, True))) for _ in range(RUNS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        return [result for chunk in pool.map(worker, range(THREADS)) for result in chunk]


@pytest.mark.parametrize("intra_op_threads", [1, 2, 4])
def test_seeded_runs_from_eight_threads(intra_op_threads):
    """320 concurrent runs of a seeded node use call indices 0..319, each exactly once."""
    shape, axes, seed, ratio = (8, 32, 16, 16), None, 31, 0.4
    so = native_options(intra_op_num_threads=intra_op_threads)
    session = ort_session(dropout_model(shape, "float32", axes, seed=seed), so)
    x = sample_data(shape, np.dtype(np.float32))
    results = _hammer(session, x, ratio)
    assert len(results) == THREADS * RUNS_PER_THREAD
    masks = []
    for output, mask in results:
        assert_structurally_valid(x, output, ratio, axes, mask)
        masks.append(mask.tobytes())
    index_of = {reference.spatial_dropout(x, ratio, True, axes, seed=seed, call_index=k,
                                          return_mask=True)[1].tobytes(): k
                for k in range(len(results))}
    used = sorted(index_of.get(mask, -1) for mask in masks)
    # Plain counts in the assertion: a diff of 200 masks would take pytest minutes.
    assert used == list(range(len(results))), (
        f"{used.count(-1)} masks match no call index, {len(set(used))} distinct indices used")
    assert len(set(masks)) > len(masks) // 2  # not all identical


def test_unseeded_runs_from_eight_threads():
    shape, axes, ratio = (4, 64, 8, 8), None, 0.5
    session = ort_session(dropout_model(shape, "float32", axes), native_options())
    x = sample_data(shape, np.dtype(np.float32))
    results = _hammer(session, x, ratio)
    masks = set()
    for output, mask in results:
        assert_structurally_valid(x, output, ratio, axes, mask)
        masks.add(mask.tobytes())
    assert len(masks) == len(results)


def test_sessions_created_and_run_from_many_threads():
    """Registering the library and creating sessions concurrently is safe too."""
    x = sample_data((4, 8, 3, 3), np.dtype(np.float32))
    model = dropout_model((4, 8, 3, 3), "float32", None, seed=5)

    def worker(_: int) -> np.ndarray:
        session = ort_session(model, native_options())
        return session.run(None, feeds(x, 0.5, True))[1]

    with ThreadPoolExecutor(THREADS) as pool:
        masks = list(pool.map(worker, range(2 * THREADS)))
    expected = reference.spatial_dropout(x, 0.5, True, None, seed=5, return_mask=True)[1]
    for mask in masks:  # every new session starts its node at call index 0
        np.testing.assert_array_equal(mask, expected)
