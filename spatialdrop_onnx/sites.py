"""The one record of a dropout site, shared by inspect, rewrite, strip, the converters and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a site is in the model as it stands."""

    #: A SpatialDropout node with at least one shared axis.
    SPATIAL = "spatial"
    #: An ONNX Dropout node, or a SpatialDropout sharing no axis.
    ELEMENTWISE = "elementwise"
    #: An exporter's random-mask subgraph that a rewrite rule recognises.
    RANDOM_SUBGRAPH = "random-subgraph"
    #: A random op no rule converts; ``reason`` says why.
    UNCONVERTIBLE = "unconvertible"


@dataclass(frozen=True)
class Site:
    """One dropout site: where it is, what it does, and what a rewrite makes of it.

    ``name`` is the node name as the model has it (the output name when the node
    is unnamed); ``graph`` the scope (``main``, ``main/<node>/<attribute>``,
    ``function <domain>.<name>``). ``ratio`` is the drop probability and
    ``shared_axes`` the axes sharing one decision, when known.
    """

    name: str
    kind: Kind
    graph: str
    op_type: str
    ratio: float | None = None
    shared_axes: tuple[int, ...] | None = None
    #: Existing nodes: "true", "false", "absent (false)" or the name of the value it reads.
    training_mode: str | None = None
    seed: int | None = None
    #: Random subgraphs: the rule that recognises it and the node it becomes.
    rule: str | None = None
    becomes: str | None = None
    #: Unconvertible sites: why no rule converts it.
    reason: str | None = None
    #: Anything else a producer wants to say (kept out of equality).
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON value (no NaN or infinity: an unknown or non-finite ratio is null)."""
        ratio = self.ratio
        if ratio is not None and not math.isfinite(ratio):
            ratio = None
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "graph": self.graph,
            "op_type": self.op_type,
            "ratio": ratio,
            "shared_axes": None if self.shared_axes is None else list(self.shared_axes),
            "training_mode": self.training_mode,
            "seed": self.seed,
            "rule": self.rule,
            "becomes": self.becomes,
            "reason": self.reason,
        }
        data.update(self.extra)
        return data
