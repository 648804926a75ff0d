"""Nodes shared by both strategies: constants and the statistics' output declarations."""

from __future__ import annotations

import onnx
from onnx import NodeProto, TensorProto
from onnx import helper as oh

from ...graph import NameMaker
from .source import SampledOutput


def constant(fresh: NameMaker, base: str, dtype: int, values: list, dims: list[int] | None = None
             ) -> tuple[str, NodeProto]:
    """A fresh name and the Constant node that defines it."""
    name = fresh(base)
    shape = [len(values)] if dims is None else dims
    return name, oh.make_node("Constant", [], [name], name=name,
                              value=oh.make_tensor(name, dtype, shape, values))


def output_infos(output: SampledOutput, samples: int, keep_samples: bool
                 ) -> list[onnx.ValueInfoProto]:
    """Declared types of ``y_mean``, ``y_std`` (as ``y``), the classification statistics
    (``y`` without its last axis) and ``y_samples`` ([N, *y]), in output order."""
    infos = []
    for name in (output.mean, output.std):
        info = onnx.ValueInfoProto()
        info.CopyFrom(output.info)
        info.name = name
        infos.append(info)
    for name in output.classification or ():
        info = onnx.ValueInfoProto()
        info.CopyFrom(output.info)
        info.name = name
        dims = output.dims
        if dims is not None:  # a named output of unknown shape keeps none
            shape = info.type.tensor_type.shape
            shape.ClearField("dim")
            shape.dim.extend(dims[:-1])
        infos.append(info)
    if keep_samples:
        info = onnx.ValueInfoProto()
        info.CopyFrom(output.info)
        info.name = output.samples
        dims = output.dims
        if dims is not None:
            shape = info.type.tensor_type.shape
            shape.ClearField("dim")
            shape.dim.add().dim_value = samples
            shape.dim.extend(dims)
        infos.append(info)
    return infos


def stacked_samples(output: SampledOutput, y: str, k: str, fresh: NameMaker
                    ) -> tuple[str, list[onnx.NodeProto], list[onnx.NodeProto]]:
    """``y`` ([k*B, ...], ``k`` an int64 [1] value) as [k, B, ...]: the name, the nodes that
    do not depend on ``y`` (the target shape when ``y``'s other axes are declared: constants
    onnxruntime folds; a Loop takes them before it) and the nodes that reshape ``y``."""
    base = output.source
    folded, stacked = fresh(f"{base}/mc_folded_shape"), fresh(f"{base}/mc_stacked")
    reshape = oh.make_node("Reshape", [y, folded], [stacked], name=stacked)
    dims = output.dims
    if dims is not None and all(d.HasField("dim_value") for d in dims[1:]):
        rest, r_node = constant(fresh, f"{base}/mc_rest", INT64,
                                [-1, *(d.dim_value for d in dims[1:])])
        return stacked, [r_node, oh.make_node("Concat", [k, rest], [folded], name=folded,
                                              axis=0)], [reshape]
    shape, rest = fresh(f"{base}/mc_shape"), fresh(f"{base}/mc_rest")
    one, o_node = constant(fresh, f"{base}/mc_from", INT64, [1])
    big, b_node = constant(fresh, f"{base}/mc_to_end", INT64, [2**62])
    minus_one, m_node = constant(fresh, f"{base}/mc_minus_one", INT64, [-1])
    return stacked, [o_node, b_node, m_node], [
        oh.make_node("Shape", [y], [shape], name=shape),
        oh.make_node("Slice", [shape, one, big], [rest], name=rest),
        oh.make_node("Concat", [k, minus_one, rest], [folded], name=folded, axis=0),
        reshape]


def mean_and_m2(base: str, stacked: str, axis0: str, count: str, fresh: NameMaker,
                names: tuple[str, ...] = ("sum", "mean_double", "deviation", "square",
                                          "square_sum")) -> tuple[str, str, list[NodeProto]]:
    """The mean over axis 0 of ``stacked`` ([n, B, ...], double; ``count`` n as a double) and
    the sum of squared deviations from it (M2): two passes, no cancellation. The mean
    broadcasts over the samples ([n, B, ...] - [B, ...])."""
    total, mean, dev, square, m2 = (fresh(f"{base}/mc_{name}") for name in names)
    return mean, m2, [
        oh.make_node("ReduceSum", [stacked, axis0], [total], name=total, keepdims=0),
        oh.make_node("Div", [total, count], [mean], name=mean),
        oh.make_node("Sub", [stacked, mean], [dev], name=dev),
        oh.make_node("Mul", [dev, dev], [square], name=square),
        oh.make_node("ReduceSum", [square, axis0], [m2], name=m2, keepdims=0)]


def cast_to(value: str, elem_type: int, out: str, name: str) -> NodeProto:
    """``out`` = ``value`` cast to the sampled output's type (double statistics round once)."""
    return oh.make_node("Cast", [value], [out], name=name, to=elem_type)


FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
