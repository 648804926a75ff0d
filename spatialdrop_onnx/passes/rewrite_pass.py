"""Rewrite: exporter dropout → ``SpatialDropout`` / ONNX ``Dropout`` under one training switch.

Steps:

1. Models below default-domain opset 15 with something to rewrite are converted
   first (``onnx.version_converter``, isolated: it can abort on bad models).
2. The rules (:mod:`.rules`, onnx_ir + the onnxscript rewriter, driven by
   :mod:`.rewrite_engine`) replace every recognised site once; nodes only the
   replaced sites used (noise-shape arithmetic, the constant RNG key/counter)
   are removed, nothing else is touched.
3. Every new node reads ``training_mode``; :func:`~spatialdrop_onnx.graph.thread_training_switch`
   makes it a boolean scalar graph input with an initializer default
   (``training_default``, false unless asked) and threads it through
   model-local functions.
4. ``make_portable`` attaches the SpatialDropout function bodies.

Random sites no rule recognises are reported (``RewriteReport.unconvertible``)
with the reason the closest rule gave.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .. import spec
from ..errors import UserError, prefixed_with
from ..function_body import MIN_OPSET, make_portable
from ..graph import (
    TRAINING_MODE,
    NameMaker,
    TypeFacts,
    check_acyclic,
    check_opset_imports,
    check_training_switch_name,
    declared_types,
    default_opset,
    is_onnx_dropout,
    is_random,
    is_spatial_dropout,
    iter_nodes,
    model_scopes,
    set_training_default,
    thread_training_switch,
    type_facts,
    unchanged_scopes,
)
from ..options import ElementwiseOp, values
from ..reports import JsonReport
from ..sites import Site
from .opset import convert_opset
from .result import ModelArg, PassResult, load_argument

if TYPE_CHECKING:
    import onnx_ir as ir

    from ..modelio import LoadedModel

#: Models with at least this many main-graph nodes get function bodies chosen from the types
#: they declare only (no shape inference).
INFER_TYPES_BELOW = 20_000
#: The most bytes a rule reads from external data (a small constant: threshold, scale).
_MAX_CONSTANT_BYTES = 512


@dataclass(frozen=True)
class RewriteReport(JsonReport):
    """What a rewrite did: sites converted, existing nodes rewired, random sites left."""

    converted: tuple[Site, ...] = ()
    rewired: tuple[Site, ...] = ()
    unconvertible: tuple[Site, ...] = ()
    opset_converted_from: int | None = None

    @property
    def modified(self) -> bool:
        return bool(self.converted or self.rewired)


@dataclass(frozen=True)
class RuleOutcome:
    """The rules applied to a model (no opset conversion, no switch, no function bodies)."""

    model: onnx.ModelProto | None  # None: nothing matched (or a dry run)
    converted: tuple[Site, ...]
    rewired: tuple[Site, ...]
    unconvertible: tuple[Site, ...]
    #: Type facts of the input model; they hold for the output's surviving values.
    facts: TypeFacts | None = None
    #: Every name in use in the output (the engine's, new names included).
    names: NameMaker | None = None


def check_elementwise(elementwise: str) -> str:
    if elementwise not in values(ElementwiseOp):
        raise ValueError(f"elementwise must be one of {', '.join(values(ElementwiseOp))}, "
                         f"not {elementwise!r}")
    return elementwise


def rewrite(model: ModelArg | LoadedModel, *, training_default: bool = False,
            elementwise: str = "dropout") -> PassResult[RewriteReport]:
    """Rewrite the exporter dropout of ``model`` (a ModelProto or a path); returns a new model.

    Channel-wise random-mask sites become ``SpatialDropout``, element-wise ones
    ONNX ``Dropout``-13; existing ``Dropout`` / ``SpatialDropout`` nodes with a
    constant ``training_mode`` are rewired. Every site reads the boolean graph
    input ``training_mode``, whose initializer default is ``training_default``
    (false: the model computes its inference output unless asked). The result is
    portable (function bodies attached), and rewriting it again changes nothing.

    ``elementwise="spatial"`` writes element-wise sites as
    ``SpatialDropout(shared_axes=[])`` instead of ONNX ``Dropout``: onnxruntime
    deletes an interior ``Dropout`` during session optimisation whatever its
    ``training_mode`` (see docs/passes.md). Keras RNN masks are always written that way.
    """
    check_elementwise(elementwise)
    if not isinstance(training_default, bool):
        raise TypeError(f"training_default must be a bool, not {type(training_default).__name__}")
    given = load_argument(model, "rewrite")
    proto, folder = given.model, given.folder
    check_opset_imports(proto)
    opset_from = None
    source = proto
    with unchanged_scopes(proto):  # read only, up to the rules' own copy
        if _has_candidates(source):
            check_training_switch_name(source)
            opset = default_opset(source.opset_import)
            if opset < MIN_OPSET:
                source = convert_opset(source, opset, given.source)
                opset_from = opset
        with unchanged_scopes(source):
            outcome = apply_rules(source, elementwise=elementwise, folder=folder)
    report = RewriteReport(outcome.converted, outcome.rewired, outcome.unconvertible,
                           opset_from)
    result = onnx.ModelProto()
    if outcome.model is None:
        # Nothing matched: keep the input byte for byte (no IR round trip), which
        # also makes a second rewrite a no-op.
        result.CopyFrom(proto)
        set_training_default(result, training_default)
        return PassResult(given.complete(result),
                          RewriteReport(unconvertible=outcome.unconvertible))
    result = outcome.model
    with unchanged_scopes(result):  # the switch adds inputs, never nodes
        thread_training_switch(result, training_default)
        set_training_default(result, training_default)
        has_ours = any(is_spatial_dropout(n) for _, n in iter_nodes(result))
        # The input's type facts hold for every value the new nodes read. On large models
        # only what they declare is used: inference (~3 s per 100,000 nodes) would only pick
        # a faster function body for undeclared float data (the exact double path otherwise).
        types = outcome.facts
        if has_ours and (types is None or len(result.graph.node) >= INFER_TYPES_BELOW):
            types = declared_types(result)
    if has_ours:
        try:
            result = make_portable(result, types=types, names=outcome.names)
        except (ValueError, spec.SpatialDropoutError) as err:
            raise UserError(f"cannot attach SpatialDropout function bodies: {err}") from None
    return PassResult(given.complete(result), report)


def _has_candidates(model: onnx.ModelProto) -> bool:
    """Random ops, or dropout nodes whose training_mode is not the switch yet."""
    for _, node in iter_nodes(model):
        if is_random(node):
            return True
        if (is_onnx_dropout(node) or is_spatial_dropout(node)) and len(node.input) > 2 and \
                node.input[2] not in ("", TRAINING_MODE):
            return True
    return False


def apply_rules(model: onnx.ModelProto, *, elementwise: str = "dropout",
                folder: os.PathLike | None = None, dry_run: bool = False) -> RuleOutcome:
    """Apply the rules only: no opset conversion, no switch definition, no function bodies.

    The new nodes read ``training_mode`` without defining it. With ``dry_run``
    the sites are found but no model is serialized (what ``inspect`` needs).
    """
    if not any(is_random(n) or is_onnx_dropout(n) or is_spatial_dropout(n)
               for s in model_scopes(model) for n in s.nodes):
        return RuleOutcome(None, (), (), ())
    # Deferred: only models with candidate sites pay for onnx_ir / onnxscript.
    import onnx_ir as ir

    from . import region as regions
    from .rewrite_engine import RewriteEngine

    # A large graph: convert only the neighbourhood of its sites (see passes/region.py).
    found = regions.extract(model)
    part = model if found is None else found.model
    # The rules follow producers: a cycle would never end (checked on what they see only,
    # which keeps a strip of 100,000 nodes without random ops from paying for it).
    check_acyclic(part)
    # Type facts of what the rules see: a region's own (inferred, if ever, on the region:
    # its inputs carry the types the whole graph declares above them).
    facts = type_facts(part)
    ir_model = ir.serde.deserialize_model(part)
    engine = RewriteEngine(ir_model, part, elementwise=elementwise,
                           read_external=_external_reader(folder), whole=model, facts=facts)
    engine.run()
    converted, rewired = tuple(engine.converted), tuple(engine.rewired)
    unconvertible = tuple(engine.unconvertible())
    if dry_run or not (converted or rewired):
        return RuleOutcome(None, converted, rewired, unconvertible, facts)
    rewritten = ir.serde.serialize_model(ir_model)
    _keep_value_info(rewritten, part)
    if found is None:
        return RuleOutcome(rewritten, converted, rewired, unconvertible, facts,
                           engine.ctx.names)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    regions.splice(result, found, rewritten)
    return RuleOutcome(result, converted, rewired, unconvertible, facts, engine.ctx.names)


def _external_reader(folder: os.PathLike | None
                     ) -> Callable[[ir.Tensor], np.ndarray | None] | None:
    """A bounded reader of small external constants inside ``folder`` (None: never read).

    A threshold or scale a rule needs may live in external data; it is read with
    :func:`~spatialdrop_onnx.modelio.read_external_bytes` (validated again, at most
    a few hundred bytes, never following links), or stays unknown.
    """
    if folder is None:
        return None
    from ..modelio import read_external_bytes

    def read(tensor: ir.Tensor) -> np.ndarray | None:
        if not isinstance(tensor, ir.ExternalTensor) or tensor.dtype is None:
            return None
        proto = onnx.TensorProto(name=tensor.name or "", data_type=int(tensor.dtype),
                                 dims=list(tensor.shape.numpy()))
        proto.data_location = onnx.TensorProto.EXTERNAL
        entries = {"location": tensor.location, "offset": tensor.offset,
                   "length": tensor.length}
        for key, value in entries.items():
            if value is not None:
                proto.external_data.add(key=key, value=str(value))
        try:
            data = read_external_bytes(proto, folder, _MAX_CONSTANT_BYTES)
            dtype = tensor.dtype.numpy()
            return np.frombuffer(data, dtype=dtype).reshape(tensor.shape.numpy()).copy()
        except (UserError, ValueError, TypeError):
            return None

    return read


def _keep_value_info(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Keep only the value_info entries the input had (onnx_ir writes one per typed value)."""
    names = {info.name for s in model_scopes(source) if s.graph is not None
             for info in s.graph.value_info}
    for scope in model_scopes(model):
        graph = scope.graph
        if graph is None:
            continue
        kept = [info for info in graph.value_info if info.name in names]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)


def rewrite_file(src: str | os.PathLike, dst: str | os.PathLike, *,
                 training_default: bool = False, elementwise: str = "dropout",
                 in_place: bool = False) -> RewriteReport:
    """Load ``src`` safely, rewrite it and save it atomically to ``dst``."""
    from ..modelio import check_output_path, load_model, save_model

    loaded = load_model(src, skeleton=True)  # large tensors are copied when saving
    check_output_path(dst, loaded, in_place)  # refuse before the slow work
    with prefixed_with(src):
        result = rewrite(loaded, training_default=training_default, elementwise=elementwise)
    save_model(result.model, dst, source=loaded, in_place=in_place)
    return result.report
