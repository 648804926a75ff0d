"""Loop bodies every runtime reads alike: OpenVINO, onnx.reference, onnxruntime.

Two rewrites, each in its own module, applied to every Loop (and Scan) at any
depth — the main graph, nested bodies (the MC loop around a model's GRU loops),
model-local functions:

1. :mod:`.loop_invariants` — states a body passes through unchanged are read
   from the enclosing scope instead, and every body output gets a node of its
   own (OpenVINO refuses a body output that is a body input);
2. :mod:`.loop_scan_outputs` — scan outputs leave the body with a leading axis
   of 1 and are reshaped after the loop from their own shape (onnx.reference
   concatenates instead of stacking slices of rank 2 and more).

``convert`` applies it to what it writes and ``inline`` (the portable form) to
its output, so ``strip`` and ``mc`` models built from them inherit it. The
computation is unchanged; onnxruntime runs both forms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx

from ..graph import NameMaker, all_names, iter_nodes
from .loop_invariants import hoist_loop_invariants
from .loop_scan_outputs import stack_scan_outputs_explicitly
from .result import ModelArg, PassResult, load_argument


@dataclass(frozen=True)
class PortableLoopsReport:
    """What the pass changed in the model's Loop/Scan bodies."""

    #: Pass-through states now read from the enclosing scope.
    hoisted: int = 0
    #: Body outputs given an Identity of their own.
    identities: int = 0
    #: Loop scan outputs emitted as ``[1, ...]`` slices and reshaped after the loop.
    stacked: int = 0
    #: Scan outputs left as they were (unknown rank, opset below 13): loop path and why.
    left: tuple[str, ...] = ()

    @property
    def modified(self) -> bool:
        return bool(self.hoisted or self.identities or self.stacked)

    def to_dict(self) -> dict:
        return asdict(self)


def make_loops_portable(model: onnx.ModelProto) -> PortableLoopsReport:
    """Rewrite every Loop/Scan body of ``model`` in place (see the module docstring)."""
    if not any(node.op_type in ("Loop", "Scan")
               for _, node in iter_nodes(model, include_ours=True)):
        return PortableLoopsReport()
    fresh = NameMaker(all_names(model))
    invariants = hoist_loop_invariants(model, fresh)
    scans = stack_scan_outputs_explicitly(model, fresh)
    return PortableLoopsReport(invariants.hoisted, invariants.identities, scans.stacked,
                               scans.left)


def portable_loops(model: ModelArg) -> PassResult[PortableLoopsReport]:
    """A copy of ``model`` (a ModelProto or a path) with portable Loop/Scan bodies."""
    given = load_argument(model, "portable_loops")
    result = onnx.ModelProto()
    result.CopyFrom(given.complete(given.model))
    return PassResult(result, make_loops_portable(result))

