"""Option values declared once: each enum drives the CLI's ``click.Choice`` and the
library's own check (a light module: the command line imports it at start-up)."""

from __future__ import annotations

from enum import StrEnum


class ElementwiseOp(StrEnum):
    """How ``rewrite`` writes element-wise sites.

    ``dropout``: ONNX Dropout-13 (the standard op). ``spatial``: SpatialDropout with
    ``shared_axes=[]``. onnxruntime's inference builds remove a Dropout node during
    session optimisation (EliminateDropout) whatever its training_mode, unless its
    output is a graph output or its input a graph input; SpatialDropout keeps
    training working there.
    """

    DROPOUT = "dropout"
    SPATIAL = "spatial"


class Strategy(StrEnum):
    """How ``mc`` takes its samples (``auto``: the Loop, folding as many samples per
    iteration as fit the cache at the run's batch size when folding is valid;
    ``passes.monte_carlo.choose``)."""

    AUTO = "auto"
    BATCH = "batch"
    LOOP = "loop"


#: More Monte-Carlo samples than this is surely a typo (a Loop trip count that large is pointless).
MAX_SAMPLES = 1_000_000


def values(choices: type[StrEnum]) -> tuple[str, ...]:
    """The accepted strings of an option, in declaration order."""
    return tuple(choice.value for choice in choices)
