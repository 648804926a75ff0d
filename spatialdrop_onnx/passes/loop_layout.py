"""Where a Loop or Scan node keeps its state variables: one layout for both ops.

``Loop(M, cond, v...)`` with body ``(i, cond, v...) -> (cond, v..., scan...)`` and
``Scan(v..., x...)`` (opset 9+) with body ``(v..., x_t...) -> (v..., y_t...)`` both
carry N state variables; state k is node input ``node_in + k``, body input
``body_in + k``, body output ``body_out + k`` and node output ``k``. Scan
outputs follow the states in the body's and the node's outputs.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import TypeVar

from onnx import GraphProto, NodeProto

from ..graph import get_attr, is_default_domain, subgraphs
from ..graph.scopes import Scope

T = TypeVar("T")


@dataclass(frozen=True)
class LoopLayout:
    """The state-variable positions of one Loop/Scan node and its body."""

    node: NodeProto
    body: GraphProto
    scope: Scope
    """The scope the node sits in (its body is a child of it)."""
    states: int
    node_in: int
    body_in: int
    body_out: int

    @property
    def is_loop(self) -> bool:
        return self.node.op_type == "Loop"

    @property
    def scan_outputs(self) -> int:
        """How many body outputs are scan outputs (accumulated over iterations)."""
        return len(self.body.output) - self.body_out - self.states

    def label(self) -> str:
        return f"{self.scope.path}/{self.node.name or self.node.op_type}"


def loop_layout(node: NodeProto, scope: Scope) -> LoopLayout | None:
    """The layout of a default-domain Loop, or Scan of opset 9+; None for anything else."""
    if node.op_type not in ("Loop", "Scan") or not is_default_domain(node.domain):
        return None
    body = next((g for attr, g in subgraphs(node) if attr.name == "body"), None)
    if body is None:
        return None
    if node.op_type == "Loop":
        return LoopLayout(node, body, scope, max(len(node.input) - 2, 0), 2, 2, 1)
    scan_inputs = get_attr(node, "num_scan_inputs")
    if scope.opset < 9 or scan_inputs is None:  # Scan-8 leads with sequence_lens
        return None
    return LoopLayout(node, body, scope, len(node.input) - scan_inputs.i, 0, 0, 0)


def insert_at(items: MutableSequence[T], at: int, new: list[T]) -> None:
    """Insert ``new`` at ``at`` into a protobuf repeated field (names or messages), in place."""
    kept = [_copy(item) for item in items]
    kept[at:at] = [_copy(item) for item in new]
    del items[:]
    items.extend(kept)  # type: ignore[attr-defined]


def _copy(item: T) -> T:
    if isinstance(item, str):
        return item
    copy = type(item)()
    copy.CopyFrom(item)  # type: ignore[attr-defined]
    return copy
