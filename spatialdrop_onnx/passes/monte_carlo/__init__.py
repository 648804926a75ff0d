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
* ``loop`` (:mod:`.loop`): a ``Loop`` with running mean and variance in double, any
  model. Where folding is valid, each iteration folds k of the N samples into the
  batch, k chosen at run time from the batch size so that k x B rows of the largest
  sampled activation fit :data:`FOLD_CACHE_BYTES` (``report.chunked``); else one
  sample per iteration (memory: one sample's);
* ``auto``: the folding Loop when folding is proven valid and a row's size is known,
  ``batch`` when a row's size is not known, the one-sample Loop when folding is not
  valid (:func:`choose`; the report says which and why). Told the batch size the model
  will be served at (``batch_size``), it builds ``batch`` where all N x B rows fit the
  budget: the same folding without the Loop's fixed cost.

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

import onnx

from ... import spec
from ...errors import RefusedError, UsageError, UserError, prefixed_with, printable
from ...function_body import make_portable
from ...graph import check_acyclic, infer_types, model_scopes
from ...options import MAX_SAMPLES, Strategy, values
from ...reports import JsonReport, fields_dict
from ..result import ModelArg, PassResult, load_argument
from .batch import build_batch, fold
from .folding import FoldCheck, check_folding
from .loop import Chunking, build_loop
from .source import PreparedSource, our_domain_used, prepare
from .stochastic import partition

STRATEGIES = values(Strategy)
#: Bytes N folded copies of a batch's largest sampled activation may take while batch
#: folding stays faster than the Loop: one core's L2 cache (2 MiB on the benchmark machine,
#: 1-2 MiB on most x86 servers). Folding saves the per-node cost of N-1 runs; once the
#: N x B folded rows outgrow the cache, the Loop, which keeps B rows at a time in it, wins
#: (measured, ``bench --mc``: the CNNs' crossovers lay between 1 and 4, and 4 and 8 images,
#: where this budget puts them at 4 and 8 rows; docs/monte-carlo.md).
FOLD_CACHE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class SampledStatistics(JsonReport):
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
    #: Bytes one row of the largest sampled activation takes (None: not known, or not
    #: looked at because folding is not valid or batch folding was asked for).
    row_bytes: int | None = None
    #: Rows per call up to which all N folded samples fit FOLD_CACHE_BYTES
    #: (FOLD_CACHE_BYTES // (samples * row_bytes); None when row_bytes is).
    fold_rows: int | None = None
    #: The Loop folds several samples per iteration, as many as fit at the run's batch size.
    chunked: bool = False
    #: The serving batch size auto was told (None: not told; it then decides at run time).
    batch_size: int | None = None

    @property
    def classification(self) -> tuple[str, ...]:
        """The source outputs that got entropies and mutual information."""
        return tuple(o.source for o in self.outputs if o.entropy)

    def to_dict(self) -> dict:
        # The fields, and one derived key: the outputs classification statistics were added to.
        return {**fields_dict(self), "classification": list(self.classification)}


@dataclass(frozen=True)
class Choice:
    """What ``auto`` builds and why (see :func:`choose`)."""

    strategy: str
    reason: str
    row_bytes: int | None = None
    fold_rows: int | None = None


def largest_row(prepared: PreparedSource, check: FoldCheck) -> tuple[str, int] | None:
    """The batched value of the sampled part (made or read by a stochastic node) whose
    row takes the most bytes, and that size; None when no such value's size is known.

    Only values whose axis 0 the folding check proved to be the batch count, with every
    other axis of known size (the model's declarations completed by onnx shape inference).
    """
    from ...schema import register_schema

    register_schema()  # shape inference then follows the values through SpatialDropout
    model = prepared.model
    facts = infer_types(model)
    main = model_scopes(model)[0]
    best: tuple[str, int] | None = None
    for index in partition(model).stochastic:
        node = main.nodes[index]
        for name in (*node.input, *node.output):
            found = facts.type_of(main, name) if name in check.batched else None
            if found is None or not found.dims or \
                    not all(isinstance(d, int) for d in found.dims[1:]):
                continue
            try:
                size = onnx.helper.tensor_dtype_to_np_dtype(found.elem_type).itemsize
            except (KeyError, TypeError):  # no numpy type (e.g. float8): skip
                continue
            for dim in found.dims[1:]:
                size *= int(dim)
            if best is None or size > best[1]:
                best = (name, size)
    return best


def _size(count: float) -> str:
    """Bytes as KB or MB, for reasons."""
    return f"{count / 1024:.1f} KB" if count < 1024 * 1024 else f"{count / 2**20:.1f} MB"


def choose(prepared: PreparedSource, check: FoldCheck, samples: int,
           batch_size: int | None = None) -> Choice:
    """``auto``'s rule: which strategy is faster, from what is known when the model is built.

    Both strategies run the deterministic prefix once, so where the first dropout sits
    changes how much each gains over N calls, not which of them is faster. What decides is
    the batch size against the size of the folded activations: folding runs each sampled node
    once on N x B rows, the Loop N times on B rows. While N x B rows of the largest sampled
    activation fit :data:`FOLD_CACHE_BYTES`, folding saves N-1 runs' per-node cost and wins
    (up to 18x on the seed model for one sequence); beyond, the Loop's smaller working set
    wins (1.5-2x on the CNNs at 128 images). The batch size is only known at run time, so
    when folding is valid and a row's size is known, the Loop decides there: each iteration
    folds k of the N samples into the batch, k the largest divisor of N whose k x B rows fit
    the budget (all N in one iteration for small batches, one per iteration for large ones).
    Folding alone is kept when a row's size is unknown, the one-sample Loop when folding is not
    valid. Told the serving ``batch_size`` B, auto builds folding alone where all N x B rows
    fit: the Loop would take all N in one iteration there, and its fixed cost (10-13 us a
    call in onnxruntime 1.32) is some 10 % of a small model's call at one request.
    """
    if not check.foldable:
        return Choice("loop", f"batch folding is not valid: {check.reason}; the Loop takes one "
                              "sample per iteration")
    found = largest_row(prepared, check)
    if found is None:
        return Choice("batch", f"{check.reason}; the size of a row is not known, so folding is "
                               "assumed to fit in the cache (for large batches, the loop "
                               "strategy keeps memory to one sample's)")
    if not fold(prepared, check.batched).shares_prefix:
        return Choice("loop", f"{check.reason}, but a value the sampled part reads is made by "
                              "a node with a body, which folding cannot recompute: it would "
                              "run the whole model N times over; the Loop takes one sample per "
                              "iteration and runs the prefix once")
    name, row = found
    rows = FOLD_CACHE_BYTES // (samples * row)
    single = FOLD_CACHE_BYTES // row
    if batch_size is not None and batch_size <= rows:
        return Choice("batch", f"{check.reason}; at the batch size it is told ({batch_size}), "
                               f"all {samples} x {batch_size} rows of {printable(name, 80)} "
                               f"({_size(samples * batch_size * row)}) fit "
                               f"{_size(FOLD_CACHE_BYTES)}: folded in one run, with no Loop "
                               f"(up to {rows} rows)", row, rows)
    told = ("" if batch_size is None else
            f"; at the batch size it is told ({batch_size}), all {samples} x {batch_size} "
            f"rows do not fit")
    return Choice("loop", f"{check.reason}{told}; the Loop folds as many of the {samples} "
                          f"samples per iteration as fit {_size(FOLD_CACHE_BYTES)} at the batch "
                          f"it is given (one row of {printable(name, 80)}: {_size(row)}): all "
                          f"{samples} in one iteration up to {rows} rows, one per iteration from "
                          f"{single + 1} rows", row, rows)


def loop_chunking(prepared: PreparedSource, check: FoldCheck,
                  row_bytes: int | None = None) -> Chunking | None:
    """How the Loop folds samples per iteration; None for one sample per iteration (folding
    not valid, a row's size unknown, or a prefix value folding cannot recompute).
    ``row_bytes``: the row size when :func:`choose` found it already."""
    if not check.foldable or not fold(prepared, check.batched).shares_prefix:
        return None
    if row_bytes is None:
        found = largest_row(prepared, check)
        if found is None:
            return None
        row_bytes = found[1]
    return Chunking(check.batched, check.batched_inputs[0], row_bytes, FOLD_CACHE_BYTES)


def _check_arguments(samples: object, strategy: object, classification: object = False,
                     logits: object = False, batch_size: object = None) -> None:
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
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, not {printable(batch_size)}")
        if strategy != "auto":
            raise UsageError(f"batch_size informs the auto strategy's choice; with strategy "
                             f"{printable(strategy)} it would change nothing")


def monte_carlo(model: ModelArg, *, samples: int, strategy: str = "auto",
                keep_samples: bool = False, classification: bool | Collection[str] = False,
                logits: bool = False, batch_size: int | None = None
                ) -> PassResult[MonteCarloReport]:
    """The Monte-Carlo model of ``model`` (a ModelProto or a path); see the package docstring.

    ``classification``: True adds the entropies and the mutual information for every
    output that is a probability vector (float, last axis declared with size >= 2);
    a collection of output names adds them for those outputs only (a named output may
    have a last axis of symbolic size). ``logits``: those outputs are logits (a softmax
    over the last axis is taken first); ``y_mean``/``y_std`` stay those of the logits.
    ``batch_size``: the batch size the model will be served at, for ``auto`` (it then
    folds without a Loop where all N x B rows fit; the model still takes any batch).

    Raises UsageError for a bad ``samples``/``strategy``/``logits``/``batch_size`` or a named
    classification output the model does not have, RefusedError when
    ``strategy="batch"`` is asked for a model whose samples cannot be folded
    into the batch (the reason says why), UserError when the model has nothing
    random, no float output, or (with ``classification``) no probability vector.
    """
    _check_arguments(samples, strategy, classification, logits, batch_size)
    given = load_argument(model, "monte_carlo")
    # Inlining and sampling rebuild tensors: they work on a complete model, not a skeleton.
    proto = given.complete(given.model)
    check_acyclic(proto)  # sampling follows every path from a random site
    prepared = prepare(proto, classification, logits)
    check = check_folding(prepared)
    if strategy == "batch" and not check.foldable:
        raise RefusedError(f"cannot fold the samples into the batch: {check.reason} "
                           "(use the loop strategy)")
    if strategy == "auto":
        choice = choose(prepared, check, samples, batch_size)
    else:
        choice = Choice(strategy, "asked for")
    built, reason = choice.strategy, choice.reason
    chunking = loop_chunking(prepared, check, choice.row_bytes) if built == "loop" else None
    row_bytes, fold_rows = choice.row_bytes, choice.fold_rows
    if chunking is not None:
        row_bytes = chunking.row_bytes
        fold_rows = FOLD_CACHE_BYTES // (samples * row_bytes)
    report = MonteCarloReport(
        samples=samples, strategy=built, requested=strategy, reason=reason,
        foldable=check.foldable,
        outputs=tuple(SampledStatistics(o.source, o.mean, o.std,
                                        o.samples if keep_samples else None,
                                        *(o.classification or (None, None, None)))
                      for o in prepared.outputs),
        dropped_outputs=tuple(prepared.dropped), random_sites=prepared.random_sites,
        dropout_converted=prepared.dropout_converted, had_switch=prepared.had_switch,
        logits=prepared.logits, row_bytes=row_bytes, fold_rows=fold_rows,
        chunked=chunking is not None, batch_size=batch_size)
    if built == "batch":
        result = build_batch(prepared, samples, keep_samples, check.batched)
    else:
        result = build_loop(prepared, samples, keep_samples, chunking)
    if our_domain_used(result):
        try:
            result = make_portable(result)
        except (ValueError, spec.SpatialDropoutError) as err:
            raise UserError(f"cannot attach SpatialDropout function bodies: {err}") from None
    return PassResult(result, report)


def monte_carlo_file(src: str | os.PathLike, dst: str | os.PathLike, *, samples: int,
                     strategy: str = "auto", keep_samples: bool = False,
                     classification: bool | Collection[str] = False, logits: bool = False,
                     batch_size: int | None = None, in_place: bool = False) -> MonteCarloReport:
    """Load ``src`` safely, build its Monte-Carlo model and save it atomically to ``dst``."""
    from ...modelio import check_output_path, load_model, save_model

    _check_arguments(samples, strategy, classification, logits, batch_size)
    loaded = load_model(src)
    check_output_path(dst, loaded, in_place)  # refuse before the slow work
    with prefixed_with(src):  # the pass's errors name the user's file
        result = monte_carlo(loaded, samples=samples, strategy=strategy,
                             keep_samples=keep_samples, classification=classification,
                             logits=logits, batch_size=batch_size)
    save_model(result.model, dst, source=loaded, in_place=in_place)
    return result.report


__all__ = ["FOLD_CACHE_BYTES", "Choice", "MonteCarloReport", "SampledStatistics", "choose",
           "largest_row", "loop_chunking", "monte_carlo", "monte_carlo_file"]
