"""Refuse work that cannot fit before it starts, instead of crashing halfway.

Under an address-space limit (``ulimit -v``, a container's memory cap), a failed
allocation inside protobuf's C code does not raise ``MemoryError``: it crashes the
process (SIGSEGV; seen in ``rewrite`` and ``inline`` on a 1,000,000-node model).
So each pass first asks the kernel for an untouched mapping as large as the
growth it expects — about ``factor`` times the serialised size of the model's
structure (its skeleton: large tensors are not read) — and gives it back at once.
If the mapping is refused, the pass raises :class:`~spatialdrop_onnx.errors.OutOfMemory`
(exit 6) before it has built anything. Untouched pages cost nothing, so the probe
takes microseconds.

The factors are the peak growth measured per byte of structure (``VmPeak`` after
minus ``VmSize`` before, on a 57 MB, 1,000,000-node model; docs/reliability.md),
rounded up. They are an estimate: a model unlike that one may need more, and where
nothing limits the address space the kernel's out-of-memory killer decides.
"""

from __future__ import annotations

import mmap

import onnx

from .errors import OutOfMemory

#: Peak growth per byte of model structure, per pass (measured, rounded up).
PEAK_FACTOR = {
    "inspect": 21,
    "strip": 35,
    "inline": 30,
    "rewrite": 95,
    "monte_carlo": 100,
    "portable_loops": 35,
    # Per byte of the body copies written out (a 1,000-node body x 150 steps: 86).
    "unroll_loops": 90,
}
#: Below this expected growth no probe is made (it would always succeed).
_SMALL = 64 << 20


def ensure_headroom(model: onnx.ModelProto, work: str) -> None:
    """Raise OutOfMemory when the process cannot map the memory ``work`` will need."""
    # Weights are carried, not multiplied: only the structure around them grows per byte.
    weights = sum(tensor.ByteSize() for tensor in model.graph.initializer)
    ensure_bytes(PEAK_FACTOR[work] * max(model.ByteSize() - weights, 0), work)


def ensure_bytes(need: int, work: str) -> None:
    """Raise OutOfMemory when the process cannot map ``need`` more bytes for ``work``."""
    if need < _SMALL:
        return
    try:
        probe = mmap.mmap(-1, need)
    except (OSError, OverflowError, MemoryError):
        raise OutOfMemory(
            f"not enough memory for {work.replace('_', ' ')}: it needs about "
            f"{need >> 20} MB more than this process may use") from None
    probe.close()
