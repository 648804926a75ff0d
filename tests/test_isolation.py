"""run_isolated: a forked child computes, and runs no finalizer of what it inherited.

A finalizer run in the child can deadlock it: an inherited onnxruntime session
waits in its destructor on a condition variable whose waiter (a pool thread)
stayed in the parent. It hung the Monte-Carlo tests once (a garbage cycle from a
failed test, collected by the child's automatic gc).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from spatialdrop_onnx.isolation import run_isolated


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


def test_child_collects_nothing_it_inherited(tmp_path: Path):
    marker = tmp_path / "marker"
    _Finalized(marker)  # unreachable at once: a cycle only the gc can free
    assert run_isolated(_allocate_until_collected, what="allocating") is False
    assert not marker.exists(), "the child finalized an object of the parent"
    gc.collect()
    assert marker.exists()  # the parent's own collection does


def test_child_exception_reaches_the_parent():
    with pytest.raises(ValueError, match="from the child"):
        run_isolated(_fail, what="failing")
