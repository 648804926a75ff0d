"""The passes raise the collector's first threshold while they run, and restore it."""

from __future__ import annotations

import gc
import threading

import pytest
from op_models import dropout_model

import spatialdrop_onnx as sd
from spatialdrop_onnx.passes import gc_pauses, rewrite_pass


@pytest.fixture
def default_thresholds():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_raised_inside_restored_after_also_nested(default_thresholds) -> None:
    with gc_pauses.fewer_gc_pauses():
        assert gc.get_threshold() == (gc_pauses.PASS_THRESHOLD, 10, 10)
        with gc_pauses.fewer_gc_pauses():
            assert gc.get_threshold()[0] == gc_pauses.PASS_THRESHOLD
        assert gc.get_threshold()[0] == gc_pauses.PASS_THRESHOLD  # the outer block still runs
    assert gc.get_threshold() == (700, 10, 10)


def test_restored_after_an_error_and_a_higher_setting_kept(default_thresholds) -> None:
    with pytest.raises(RuntimeError), gc_pauses.fewer_gc_pauses():
        raise RuntimeError("a pass failed")
    assert gc.get_threshold() == (700, 10, 10)
    gc.set_threshold(50_000, 10, 10)
    with gc_pauses.fewer_gc_pauses():
        assert gc.get_threshold()[0] == 50_000
    assert gc.get_threshold()[0] == 50_000


def test_threads_share_one_change(default_thresholds) -> None:
    inside, leave = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with gc_pauses.fewer_gc_pauses():
            inside.wait()
            leave.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert gc.get_threshold()[0] == gc_pauses.PASS_THRESHOLD
    leave.set()
    for thread in threads:
        thread.join()
    assert gc.get_threshold() == (700, 10, 10)


def test_rewrite_strip_and_inspect_run_with_it(default_thresholds, monkeypatch) -> None:
    seen: list[int] = []
    real = rewrite_pass.apply_rules

    def recording(*args, **kwargs):
        seen.append(gc.get_threshold()[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(rewrite_pass, "apply_rules", recording)
    model = dropout_model((2, 3, 4), seed=1)
    sd.rewrite(model)
    assert seen == [gc_pauses.PASS_THRESHOLD]
    for run in (sd.strip, sd.inspect):
        assert run.__wrapped__  # the decorator's functools.wraps
    assert gc.get_threshold() == (700, 10, 10)
