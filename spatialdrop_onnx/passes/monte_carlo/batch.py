"""Batch folding: one run of the model on every input repeated N times along axis 0.

Input ``x`` [B, ...] becomes ``Tile(x, [N, 1, ...])`` = [N*B, ...] (sample s of
row b at row s*B + b); each sampled output [N*B, ...] is reshaped to
[N, B, ...] and reduced over axis 0 in double: the mean, then the population
deviation from it (two passes: no cancellation). Scalar inputs are shared.
Valid only for models :func:`~.folding.check_folding` accepts.
"""

from __future__ import annotations

import onnx
from onnx import helper as oh

from ...graph import rename_values
from .source import PreparedSource
from .stats import DOUBLE, INT64, cast_to, constant, output_infos


def _clear_value_info(graph: onnx.GraphProto) -> None:
    """Declared inner shapes say B where the folded graph has N*B: drop them (main graph)."""
    del graph.value_info[:]


def build_batch(prepared: PreparedSource, samples: int, keep_samples: bool,
                batched_inputs: tuple[str, ...]) -> onnx.ModelProto:
    """The folded Monte-Carlo model (``prepared.model`` is changed and returned)."""
    model, fresh = prepared.model, prepared.fresh
    graph = model.graph
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in prepared.inputs}
    tiled = {name: fresh(f"{name}/mc_tiled") for name in batched_inputs}
    rename_values(graph, tiled)
    del graph.input[:]
    graph.input.extend(prepared.inputs)
    _clear_value_info(graph)
    head = []
    for name, tiled_name in tiled.items():
        reps, node = constant(fresh, f"{name}/mc_repeats", INT64,
                              [samples] + [1] * (ranks[name] - 1))
        head += [node, oh.make_node("Tile", [name, reps], [tiled_name], name=tiled_name)]
    n_samples, n_node = constant(fresh, "mc/samples", INT64, [samples])
    minus_one, m_node = constant(fresh, "mc/minus_one", INT64, [-1])
    one, o_node = constant(fresh, "mc/one", INT64, [1])
    axis0, a_node = constant(fresh, "mc/axis0", INT64, [0])
    big, b_node = constant(fresh, "mc/to_end", INT64, [2**62])
    n_double, d_node = constant(fresh, "mc/samples_double", DOUBLE, [float(samples)], [])
    tail = [n_node, m_node, o_node, a_node, b_node, d_node]
    for output in prepared.outputs:
        y = tiled.get(output.value, output.value)
        base = output.source
        shape, rest, folded, stacked, stacked_d = (fresh(f"{base}/mc_{k}") for k in
                                                   ("shape", "rest", "folded_shape", "stacked",
                                                    "stacked_double"))
        total, mean_k, dev, square, sq_total, var, std_d, mean_d = (
            fresh(f"{base}/mc_{k}") for k in ("sum", "mean_keep", "deviation", "square",
                                              "square_sum", "variance", "std_double",
                                              "mean_double"))
        tail += [
            oh.make_node("Shape", [y], [shape], name=shape),
            oh.make_node("Slice", [shape, one, big], [rest], name=rest),
            oh.make_node("Concat", [n_samples, minus_one, rest], [folded], name=folded, axis=0),
            oh.make_node("Reshape", [y, folded], [stacked], name=stacked),
            oh.make_node("Cast", [stacked], [stacked_d], name=stacked_d, to=DOUBLE),
            oh.make_node("ReduceSum", [stacked_d, axis0], [total], name=total, keepdims=1),
            oh.make_node("Div", [total, n_double], [mean_k], name=mean_k),
            oh.make_node("Sub", [stacked_d, mean_k], [dev], name=dev),
            oh.make_node("Mul", [dev, dev], [square], name=square),
            oh.make_node("ReduceSum", [square, axis0], [sq_total], name=sq_total, keepdims=0),
            oh.make_node("Div", [sq_total, n_double], [var], name=var),
            oh.make_node("Sqrt", [var], [std_d], name=std_d),
            oh.make_node("Squeeze", [mean_k, axis0], [mean_d], name=mean_d),
            cast_to(mean_d, output.elem_type, output.mean, output.mean),
            cast_to(std_d, output.elem_type, output.std, output.std),
        ]
        if keep_samples:
            tail.append(oh.make_node("Identity", [stacked], [output.samples],
                                     name=output.samples))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    for output in prepared.outputs:
        graph.output.extend(output_infos(output, samples, keep_samples))
    return model
