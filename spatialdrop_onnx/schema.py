"""Registers the SpatialDropout schema with ``onnx`` so the checker and shape inference know it."""

from __future__ import annotations

import onnx
import onnx.defs
from onnx import TensorProto
from onnx.defs import OpSchema
from onnx.shape_inference import InferenceContext

from . import spec

_Param = OpSchema.FormalParameter
_OPTIONAL = OpSchema.FormalParameterOption.Optional

_DOC = """Channel-wise (spatial) dropout: one keep/drop decision per element of the
noise shape (the data shape with 1 at every axis in shared_axes), broadcast
over the shared axes. Interface and defaults as ONNX Dropout-13; kept values
are scaled by 1/(1-ratio). The mask output has the noise shape."""


def _infer(ctx: InferenceContext) -> None:
    """Type and shape inference; raises InferenceError on invalid attributes or ratio."""
    if ctx.get_num_inputs() < 1 or not ctx.has_input(0):
        raise onnx.shape_inference.InferenceError(spec.MISSING_DATA)
    data_type = ctx.get_input_type(0)
    shared_axes_attr = ctx.get_attribute(spec.ATTR_SHARED_AXES)
    shared_axes = list(shared_axes_attr.ints) if shared_axes_attr is not None else None
    if ctx.get_num_inputs() > 1 and ctx.has_input(1):
        ratio = ctx.get_input_data(1)
        if ratio is not None:
            values = onnx.numpy_helper.to_array(ratio)
            if values.size != 1:
                raise onnx.shape_inference.InferenceError("ratio must be a scalar")
            _check(spec.check_ratio, float(values.reshape(())))

    output_type = onnx.TypeProto()
    output_type.CopyFrom(data_type)
    mask_type = onnx.TypeProto()
    mask_type.CopyFrom(data_type)
    mask_type.tensor_type.elem_type = TensorProto.BOOL

    if data_type.tensor_type.HasField("shape"):
        dims = data_type.tensor_type.shape.dim
        axes = _check(spec.resolve_shared_axes, len(dims), shared_axes)
        for axis in axes:
            mask_type.tensor_type.shape.dim[axis].Clear()
            mask_type.tensor_type.shape.dim[axis].dim_value = 1
    elif shared_axes is not None and len(set(shared_axes)) != len(shared_axes):
        # Rank unknown: still refuse what is invalid for every rank.
        raise onnx.shape_inference.InferenceError(
            f"{spec.OP_TYPE}: shared_axes {shared_axes} names an axis twice")

    ctx.set_output_type(0, output_type)
    if ctx.get_num_outputs() > 1 and ctx.has_output(1):
        ctx.set_output_type(1, mask_type)


def _check(fn, *args):  # noqa: ANN001, ANN202 - tiny adapter
    """Run a spec validator, turning its error into an onnx InferenceError."""
    try:
        return fn(*args)
    except spec.SpatialDropoutError as err:
        raise onnx.shape_inference.InferenceError(f"{spec.OP_TYPE}: {err}") from None


def build_schema() -> OpSchema:
    """The OpSchema of SpatialDropout, built from :mod:`spatialdrop_onnx.spec`."""
    schema = OpSchema(
        spec.OP_TYPE,
        spec.DOMAIN,
        spec.OPSET_VERSION,
        _DOC,
        inputs=[
            _Param(spec.INPUTS[0], "T", "The input data."),
            _Param(spec.INPUTS[1], "T1", f"Drop probability, default {spec.DEFAULT_RATIO}",
                   param_option=_OPTIONAL),
            _Param(spec.INPUTS[2], "T2", "Scalar bool; when false (default) output = data.",
                   param_option=_OPTIONAL),
        ],
        outputs=[
            _Param(spec.OUTPUTS[0], "T", "data * keep / (1 - ratio)."),
            _Param(spec.OUTPUTS[1], "T2", "Keep decisions, shaped like the noise shape.",
                   param_option=_OPTIONAL),
        ],
        type_constraints=[
            ("T", list(spec.DATA_TYPES), "Floating-point data."),
            ("T1", list(spec.RATIO_TYPES), "Floating-point ratio."),
            ("T2", ["tensor(bool)"], "Boolean training flag and mask."),
        ],
        attributes=[
            OpSchema.Attribute(
                spec.ATTR_SHARED_AXES, OpSchema.AttrType.INTS,
                "Axes sharing one keep/drop decision (negative counts from the end). "
                "Default: every axis from 2 to rank-1.", required=False),
            OpSchema.Attribute(
                spec.ATTR_SEED, OpSchema.AttrType.INT,
                "Seed of the random stream; without it every run is fresh.", required=False),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register the SpatialDropout schema with onnx (idempotent)."""
    if onnx.defs.has(spec.OP_TYPE, spec.OPSET_VERSION, spec.DOMAIN):
        return
    onnx.defs.register_schema(build_schema())
