"""Monte-Carlo dropout as one model: the mean and deviation of N stochastic passes, in-graph.

``monte_carlo(model, samples=N)`` returns a model with the source's inputs
minus ``training_mode`` whose outputs are, for each float output ``y``,
``y_mean`` and ``y_std`` (population standard deviation over N passes with
dropout on) and, with ``keep_samples``, ``y_samples`` ([N, *y]). With
``classification``, each output whose last axis is a probability vector also
gives ``y_entropy``, ``y_expected_entropy`` and ``y_mutual_information``
(:mod:`.classification`; ``logits`` applies a softmax first).

Strategies:

* ``batch`` (:mod:`.batch`): the N samples folded into the batch, one run;
  only for models whose rows are independent (:mod:`.folding` proves it or
  says why not);
* ``loop`` (:mod:`.loop`): a ``Loop`` of N runs with Welford's running mean and
  variance in double; constant memory, any model;
* ``auto``: ``batch`` when folding is proven valid, else ``loop``.

The source is prepared by :mod:`.source` (switch on, element-wise ``Dropout``
kept from onnxruntime's optimiser, free output names); the result carries the
SpatialDropout function bodies, so it runs with the native kernel, on the
bodies alone and in onnx.reference; ``spatialdrop_onnx.inline`` (module ``inlining``) makes it
OpenVINO-ready.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from ... import spec
from ...errors import RefusedError, UsageError, UserError, prefixed_with, printable
from ...function_body import make_portable
from ...graph import check_acyclic
from ...options import MAX_SAMPLES, Strategy, values
from ..result import ModelArg, PassResult, load_argument
from .batch import build_batch
from .folding import FoldCheck, check_folding
from .loop import build_loop
from .source import our_domain_used, prepare

STRATEGIES = values(Strategy)


@dataclass(frozen=True)
class SampledStatistics:
    """The Monte-Carlo outputs made from one source output."""

    source: str
    mean: str
    std: str
    samples: str | None  # None without keep_samples
    #: The classification statistics; None when the output is not one of them.
    entropy: str | None = None
    expected_entropy: str | None = None
    mutual_information: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The MC model's outputs made from this source output, in output order."""
        return tuple(n for n in (self.mean, self.std, self.entropy, self.expected_entropy,
                                 self.mutual_information, self.samples) if n)

    def to_dict(self) -> dict:
        return {"source": self.source, "mean": self.mean, "std": self.std,
                "samples": self.samples, "entropy": self.entropy,
                "expected_entropy": self.expected_entropy,
                "mutual_information": self.mutual_information}


@dataclass(frozen=True)
class MonteCarloReport:
    """What ``monte_carlo`` built and why it chose its strategy."""

    samples: int
    strategy: str  # "batch" or "loop": what was built
    requested: str  # what was asked for ("auto", "batch" or "loop")
    reason: str  # why this strategy (for auto: the folding verdict)
    foldable: bool  # whether batch folding was proven valid
    outputs: tuple[SampledStatistics, ...]
    dropped_outputs: tuple[str, ...]  # non-float outputs of the source, left out
    random_sites: int  # training dropout nodes and random ops that draw per sample
    dropout_converted: int  # ONNX Dropout nodes made SpatialDropout(shared_axes=[])
    had_switch: bool  # the source had a training_mode input (now a constant true)
    logits: bool = False  # the classification outputs were read as logits (softmax first)

    @property
    def classification(self) -> tuple[str, ...]:
        """The source outputs that got entropies and mutual information."""
        return tuple(o.source for o in self.outputs if o.entropy)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "strategy": self.strategy,
                "requested": self.requested, "reason": self.reason,
                "foldable": self.foldable, "outputs": [o.to_dict() for o in self.outputs],
                "dropped_outputs": list(self.dropped_outputs),
                "random_sites": self.random_sites,
                "dropout_converted": self.dropout_converted,
                "had_switch": self.had_switch, "classification": list(self.classification),
                "logits": self.logits}


def _check_arguments(samples: object, strategy: object,
                     classification: object = False, logits: object = False) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise UsageError(f"samples must be an integer, not {type(samples).__name__}")
    if not 2 <= samples <= MAX_SAMPLES:
        raise UsageError(f"samples must be between 2 and {MAX_SAMPLES}, got {samples}")
    if strategy not in STRATEGIES:
        raise UsageError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                         f"not {printable(strategy)}")
    if not isinstance(classification, bool) and (
            isinstance(classification, str) or not isinstance(classification, Collection)):
        raise UsageError("classification must be True, False or a collection of output names, "
                         f"not {type(classification).__name__}")
    if not isinstance(logits, bool):
        raise UsageError(f"logits must be True or False, not {type(logits).__name__}")
    if logits and classification is False:
        raise UsageError("logits needs classification: it says how to read the "
                         "classification outputs")


def monte_carlo(model: ModelArg, *, samples: int, strategy: str = "auto",
                keep_samples: bool = False, classification: bool | Collection[str] = False,
                logits: bool = False) -> PassResult[MonteCarloReport]:
    """The Monte-Carlo model of ``model`` (a ModelProto or a path); see the package docstring.

    ``classification``: True adds the entropies and the mutual information for every
    output that is a probability vector (float, last axis declared with size >= 2);
    a collection of output names adds them for those outputs only (a named output may
    have a last axis of symbolic size). ``logits``: those outputs are logits (a softmax
    over the last axis is taken first); ``y_mean``/``y_std`` stay those of the logits.

    Raises UsageError for a bad ``samples``/``strategy``/``logits`` or a named
    classification output the model does not have, RefusedError when
    ``strategy="batch"`` is asked for a model whose samples cannot be folded
    into the batch (the reason says why), UserError when the model has nothing
    random, no float output, or (with ``classification``) no probability vector.
    """
    _check_arguments(samples, strategy, classification, logits)
    given = load_argument(model, "monte_carlo")
    # Inlining and sampling rebuild tensors: they work on a complete model, not a skeleton.
    proto = given.complete(given.model)
    check_acyclic(proto)  # sampling follows every path from a random site
    prepared = prepare(proto, classification, logits)
    check = check_folding(prepared) if strategy != "loop" else FoldCheck(False, "not checked")
    if strategy == "batch" and not check.foldable:
        raise RefusedError(f"cannot fold the samples into the batch: {check.reason} "
                           "(use the loop strategy)")
    if strategy == "loop":
        built, reason = "loop", "asked for"
    elif check.foldable:
        built = "batch"
        reason = "asked for" if strategy == "batch" else check.reason
    else:
        built, reason = "loop", f"batch folding is not valid: {check.reason}"
    report = MonteCarloReport(
        samples=samples, strategy=built, requested=strategy, reason=reason,
        foldable=check.foldable,
        outputs=tuple(SampledStatistics(o.source, o.mean, o.std,
                                        o.samples if keep_samples else None,
                                        *(o.classification or (None, None, None)))
                      for o in prepared.outputs),
        dropped_outputs=tuple(prepared.dropped), random_sites=prepared.random_sites,
        dropout_converted=prepared.dropout_converted, had_switch=prepared.had_switch,
        logits=prepared.logits)
    if built == "batch":
        result = build_batch(prepared, samples, keep_samples, check.batched)
    else:
        result = build_loop(prepared, samples, keep_samples)
    if our_domain_used(result):
        try:
            result = make_portable(result)
        except (ValueError, spec.SpatialDropoutError) as err:
            raise UserError(f"cannot attach SpatialDropout function bodies: {err}") from None
    return PassResult(result, report)


def monte_carlo_file(src: str | os.PathLike, dst: str | os.PathLike, *, samples: int,
                     strategy: str = "auto", keep_samples: bool = False,
                     classification: bool | Collection[str] = False, logits: bool = False,
                     in_place: bool = False) -> MonteCarloReport:
    """Load ``src`` safely, build its Monte-Carlo model and save it atomically to ``dst``."""
    from ...modelio import check_output_path, load_model, save_model

    _check_arguments(samples, strategy, classification, logits)
    loaded = load_model(src)
    check_output_path(dst, loaded, in_place)  # refuse before the slow work
    with prefixed_with(src):  # the pass's errors name the user's file
        result = monte_carlo(loaded, samples=samples, strategy=strategy,
                             keep_samples=keep_samples, classification=classification,
                             logits=logits)
    save_model(result.model, dst, source=loaded, in_place=in_place)
    return result.report


__all__ = ["MonteCarloReport", "SampledStatistics", "monte_carlo", "monte_carlo_file"]
