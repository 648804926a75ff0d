"""Rewrite: exporter dropout → ``SpatialDropout`` / ONNX ``Dropout`` under one training switch.

Steps (on an ``onnx_ir`` model, rules from :mod:`.rules` applied with the
onnxscript rewriter):

1. Shape hints from ONNX shape inference (for the shape reasoning only; the
   model's own ``value_info`` is not changed).
2. The rules replace every recognised site. Each new node reads the scope's
   ``training_mode``: a boolean scalar graph input with an initializer default
   (created once, reused on later rewrites), or — inside a model-local
   function — a new function input that every call site passes on.
3. Nodes only the replaced sites used (noise-shape arithmetic, the constant
   RNG key/counter) are removed; nothing else is touched.
4. ``make_portable`` attaches the SpatialDropout function bodies; models below
   default-domain opset 15 are converted first (``onnx.version_converter``).

Random sites no rule recognises are reported (``RewriteReport.unconvertible``)
with the reason the closest rule gave.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import spec
from ..errors import UserError
from ..function_body import MIN_OPSET, make_portable
from . import _proto

TRAINING_MODE = "training_mode"
#: Accepted values of ``elementwise`` (kept in sync with rules._common.ELEMENTWISE_OPS,
#: which is not imported here so that strip stays free of onnxscript).
ELEMENTWISE_OPS = ("dropout", "spatial")


@dataclass
class RewriteReport:
    """Sites the rewrite converted (as inspect reports them) and sites it could not."""

    sites: list[dict] = field(default_factory=list)
    rewired_dropouts: int = 0
    unconvertible: list[dict] = field(default_factory=list)
    opset_converted_from: int | None = None


def rewrite(model: onnx.ModelProto, *, training_default: bool = True,
            elementwise: str = "dropout") -> onnx.ModelProto:
    """Return a copy of ``model`` with its exporter dropout rewritten.

    Channel-wise random-mask sites become ``SpatialDropout``, element-wise ones
    ONNX ``Dropout``-13; existing ``Dropout`` nodes with a constant
    ``training_mode`` are rewired. Every site reads the boolean graph input
    ``training_mode``, whose initializer default is ``training_default``
    (true keeps what the exported model did). The result is portable
    (function bodies attached) and rewriting it again changes nothing.

    ``elementwise="spatial"`` writes element-wise sites as
    ``SpatialDropout(shared_axes=[])`` instead of ONNX ``Dropout``: onnxruntime's
    inference builds delete a ``Dropout`` whose input is computed and whose
    output is not a graph output during session optimisation, whatever its
    ``training_mode`` (see docs/passes.md). Keras RNN masks are always written
    that way for the same reason.
    """
    return rewrite_with_report(model, training_default=training_default,
                               elementwise=elementwise)[0]


def rewrite_with_report(model: onnx.ModelProto, *, training_default: bool = True,
                        elementwise: str = "dropout"
                        ) -> tuple[onnx.ModelProto, RewriteReport]:
    """Like :func:`rewrite`, also returning a :class:`RewriteReport`."""
    if elementwise not in ELEMENTWISE_OPS:
        raise UserError(f"elementwise must be one of {', '.join(ELEMENTWISE_OPS)}, "
                        f"got {elementwise!r}")
    report = RewriteReport()
    source = model
    opset = _proto.default_opset(model.opset_import)
    if opset < MIN_OPSET and _has_candidates(model):
        source = _convert_opset(model, opset)
        report.opset_converted_from = opset
    result, sites, unconvertible, rewired = _rewrite_sites(
        source, training_default=training_default, elementwise=elementwise)
    report.sites = sites
    report.unconvertible = unconvertible
    report.rewired_dropouts = rewired
    if any(_proto.is_spatial_dropout(n) for top in _proto.model_scopes(result)
           for s in _proto.flatten(top) for n in s.nodes):
        try:
            result = make_portable(result)
        except (ValueError, spec.SpatialDropoutError) as err:
            raise UserError(f"cannot attach SpatialDropout function bodies: {err}") from None
    return result, report


def rewrite_sites(model: onnx.ModelProto, *, training_default: bool,
                  elementwise: str = "dropout"
                  ) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """Apply the rules only (no opset conversion, no function bodies); used by strip/inspect.

    Returns the model, the converted sites and the unconvertible random sites.
    """
    result, sites, unconvertible, _ = _rewrite_sites(
        model, training_default=training_default, elementwise=elementwise)
    return result, sites, unconvertible


def _has_candidates(model: onnx.ModelProto) -> bool:
    for top in _proto.model_scopes(model):
        for scope in _proto.flatten(top):
            for node in scope.nodes:
                if _proto.is_random(node) or (
                        (_proto.is_onnx_dropout(node) or _proto.is_spatial_dropout(node))
                        and len(node.input) > 2 and node.input[2] not in ("", TRAINING_MODE)):
                    return True
    return False


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        import onnx.version_converter

        converted = onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise UserError(
            f"the model imports default-domain opset {opset}; rewriting needs >= {MIN_OPSET} "
            f"and onnx.version_converter could not convert it: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    return converted


def _shape_hints(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """name -> dims from ONNX shape inference (best effort; never modifies ``model``)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - hints are optional
        return {}
    # Inference names unknown dims itself ("unk__0"): such a name says nothing about
    # another tensor's dims, so only dim_params the model declares are kept.
    declared = {dim.dim_param for t in _proto.value_types(model).values()
                for dim in t.tensor_type.shape.dim if dim.dim_param}
    hints: dict[str, list[int | str | None]] = {}
    for name, type_proto in _proto.value_types(inferred).items():
        tensor = type_proto.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param") and dim.dim_param in declared:
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        hints[name] = dims
    return hints


def _rewrite_sites(model: onnx.ModelProto, *, training_default: bool, elementwise: str
                   ) -> tuple[onnx.ModelProto, list[dict], list[dict], int]:
    if not _has_candidates(model):
        result = onnx.ModelProto()
        result.CopyFrom(model)
        _set_training_default(result, training_default)
        return result, [], [], 0
    # Deferred: only models with candidate sites pay for onnx_ir / onnxscript.
    import onnx_ir as ir

    from ._ir_rewrite import IrRewrite

    hints = _shape_hints(model)
    ir_model = ir.serde.deserialize_model(model)
    job = IrRewrite(ir_model, hints, training_default=training_default,
                    used_names=_proto.all_names(model), elementwise=elementwise)
    job.run(reinfer=lambda current: _shape_hints(ir.serde.serialize_model(current)))
    if not job.ctx.sites and not job.rewired:
        # Nothing matched: keep the input byte for byte (no IR round trip), which
        # also makes a second rewrite a no-op.
        result = onnx.ModelProto()
        result.CopyFrom(model)
        _set_training_default(result, training_default)
        return result, [], job.unconvertible(), 0
    result = ir.serde.serialize_model(ir_model)
    _keep_value_info(result, _value_info_names(model))
    _set_training_default(result, training_default)
    return (result, [s.report(elementwise) for s in job.ctx.sites], job.unconvertible(),
            job.rewired)


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    found = []
    for top in _proto.model_scopes(model):
        found.extend(scope.graph for scope in _proto.flatten(top) if scope.graph is not None)
    return found


def _value_info_names(model: onnx.ModelProto) -> set[str]:
    return {info.name for graph in _graphs(model) for info in graph.value_info}


def _keep_value_info(model: onnx.ModelProto, names: set[str]) -> None:
    """Keep only the value_info entries the input had (onnx_ir writes one per typed value)."""
    for graph in _graphs(model):
        kept = [info for info in graph.value_info if info.name in names]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)


def _set_training_default(model: onnx.ModelProto, value: bool) -> None:
    """Set the initializer default of an existing ``training_mode`` input."""
    if not any(i.name == TRAINING_MODE for i in model.graph.input):
        return
    for init in model.graph.initializer:
        if init.name == TRAINING_MODE:
            init.CopyFrom(onnx.numpy_helper.from_array(np.array(value), TRAINING_MODE))
            return
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value), TRAINING_MODE))


def rewrite_path(src: str | os.PathLike, dst: str | os.PathLike, *,
                 training_default: bool = True, elementwise: str = "dropout") -> RewriteReport:
    """Load ``src`` safely, rewrite it and save it atomically to ``dst`` (weights never read)."""
    from ..modelio import load_model, save_model

    loaded = load_model(src)
    result, report = rewrite_with_report(loaded.model, training_default=training_default,
                                         elementwise=elementwise)
    save_model(result, dst, source=loaded)
    return report
