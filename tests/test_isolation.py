"""run_isolated: a forked child computes, and runs no finalizer of what it inherited;
it runs only where asked (the CLI), and a child that hangs is stopped.

A finalizer run in the child can deadlock it: an inherited onnxruntime session
waits in its destructor on a condition variable whose waiter (a pool thread)
stayed in the parent. It hung the Monte-Carlo tests once (a garbage cycle from a
failed test, collected by the child's automatic gc).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest
from op_models import dropout_model

import spatialdrop_onnx as sd
from spatialdrop_onnx.errors import UsageError, UserError
from spatialdrop_onnx.isolation import in_forked_child, isolated_checks, run_isolated


@pytest.fixture
def isolating():
    with isolated_checks():
        yield


class _Finalized:
    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.cycle = self

    def __del__(self) -> None:
        self.marker.write_text("finalized")


def _allocate_until_collected() -> bool:
    """Make enough container objects that an enabled gc would collect several times."""
    kept = [[i] for i in range(200_000)]
    return gc.isenabled() and len(kept) > 0


def _fail() -> None:
    raise ValueError("from the child")


def test_child_collects_nothing_it_inherited(tmp_path: Path, isolating):
    marker = tmp_path / "marker"
    _Finalized(marker)  # unreachable at once: a cycle only the gc can free
    assert run_isolated(_allocate_until_collected, what="allocating") is False
    assert not marker.exists(), "the child finalized an object of the parent"
    gc.collect()
    assert marker.exists()  # the parent's own collection does


def test_child_exception_reaches_the_parent(isolating):
    with pytest.raises(ValueError, match="from the child"):
        run_isolated(_fail, what="failing")


def test_a_child_that_hangs_is_stopped_at_the_timeout():
    """A deadlocked child (here: one that sleeps) must not hang the caller forever."""
    start = time.monotonic()
    with isolated_checks(timeout=0.5), pytest.raises(UserError, match="did not finish sleeping"):
        run_isolated(time.sleep, 60, what="sleeping")
    assert time.monotonic() - start < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the child was reaped: no process of ours is left


def test_the_timeout_setting_is_checked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SPATIALDROP_ONNX_CHECK_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="SPATIALDROP_ONNX_CHECK_TIMEOUT"), isolated_checks():
        pass


def test_library_calls_neither_fork_nor_retune_the_collector(monkeypatch: pytest.MonkeyPatch):
    """A library call does not change its caller's process: the passes run onnx's checks
    in-process (no fork) and leave the collector's thresholds as they were."""
    def no_fork() -> int:
        raise AssertionError("a library call forked the caller's process")

    monkeypatch.setattr(os, "fork", no_fork)
    thresholds = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    model = dropout_model((2, 3, 4), seed=1)
    rewritten = sd.rewrite(model).model
    seen.append(gc.get_threshold())
    sd.strip(rewritten)
    sd.inspect(rewritten)
    sd.inline(rewritten)
    seen.append(gc.get_threshold())
    assert seen == [thresholds, thresholds]


def test_cli_commands_isolate_and_raise_the_threshold(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """The CLI owns its process: a command runs onnx's checks in a child and with a
    higher collector threshold, and restores the threshold after."""
    import onnx

    from spatialdrop_onnx.cli import main
    from spatialdrop_onnx.cli.process import COMMAND_GC_THRESHOLD
    from spatialdrop_onnx.passes import strip_pass

    seen: list[tuple[int, bool]] = []
    real = strip_pass.strip

    def recording(*args, **kwargs):
        seen.append((gc.get_threshold()[0], run_isolated(in_forked_child, what="probing")))
        return real(*args, **kwargs)

    monkeypatch.setattr(strip_pass, "strip", recording)
    path = tmp_path / "m.onnx"
    onnx.save(dropout_model((2, 3, 4), seed=1), path)
    before = gc.get_threshold()
    assert main(["strip", str(path), "-o", str(tmp_path / "s.onnx"), "-q"]) == 0
    assert seen == [(max(COMMAND_GC_THRESHOLD, before[0]), True)]
    assert gc.get_threshold() == before
