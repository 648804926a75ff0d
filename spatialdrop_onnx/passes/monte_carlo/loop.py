"""The loop strategy: the model's stochastic part as the body of a ``Loop``.

The deterministic prefix (:mod:`.stochastic`) runs once before the loop; the body
reads its values, the inputs, the initializers and the constant switch from the
outer scope.

**One sample per iteration** (any model): N iterations, then Welford's update in
double for each sampled output ``y``, with ``k`` the 1-based iteration::

    delta = y - mean;  mean += delta / k;  m2 += delta * (y - mean)

Memory is one sample's activations plus two double accumulators per output.

**k samples per iteration** (:class:`Chunking`, where batch folding is valid): the
body is the folded stochastic part (:func:`.batch.fold`) on k copies of the batch,
k chosen at run time from the batch size B as the largest divisor of N whose k x B
rows of the largest sampled activation fit the budget. A small batch then runs all
N samples in one iteration (folding's speed: the per-node cost is paid once), a
large one one sample per iteration (the Loop's: the working set stays in cache); in
between, as many as fit. The prefix values are repeated k times once, before the
loop. Each iteration reduces its [k, B, ...] samples to their mean and M2 (two
passes) and merges them into the running ones (Chan et al.'s pairwise update)::

    delta = mean_k - mean;  mean += delta * k / (n + k)
    m2 += m2_k + delta^2 * n * k / (n + k)

After the loop, ``y_mean = mean`` and ``y_std = sqrt(m2 / N)`` (population
deviation), each rounded once to ``y``'s type. With ``keep_samples`` the body also
emits its samples as a scan output, reshaped to [N, *y]. A classification output
adds two float accumulators, the sums of the samples' probabilities and of their
entropies (:mod:`.classification`).

The accumulators start as zeros of shape [1]*rank (rank from the output's
declared type) and broadcast to ``y``'s shape in the first iteration: the rank
stays fixed, which OpenVINO's Loop needs. With the rank unknown they start as
scalars (onnxruntime and onnx.reference accept the change of rank). The
condition input is an explicit true: onnx.reference runs no iteration when it
is omitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import helper as oh

from ...graph import NameMaker, names_read
from . import classification
from .batch import fold, keep_prefix_value_info, tile
from .source import PreparedSource, SampledOutput
from .stats import (
    BOOL,
    DOUBLE,
    FLOAT,
    INT64,
    cast_to,
    constant,
    mean_and_m2,
    output_infos,
    stacked_samples,
)
from .stochastic import partition


def _state_info(name: str, rank: int | None, elem_type: int = DOUBLE) -> onnx.ValueInfoProto:
    if rank is None:
        return oh.make_tensor_value_info(name, elem_type, None)
    return oh.make_tensor_value_info(name, elem_type, [None] * rank)


def _rank(output: SampledOutput) -> int | None:
    dims = output.dims
    return None if dims is None else len(dims)


def _take_body_only_initializers(graph: onnx.GraphProto, body_nodes: list[onnx.NodeProto],
                                 outer_nodes: list[onnx.NodeProto]) -> list[onnx.TensorProto]:
    """Remove from ``graph`` and return the initializers that only ``body_nodes`` read.

    With its weights in the outer scope, onnxruntime ran the body's convolutions in the
    plain layout, without the constant-weight optimisations it applies to the same nodes
    in a main graph (the CNN of ``bench --mc``: 1.0x the N calls; 1.5x with its weights
    in the body). Moved, not copied, so the model does not grow. An initializer that is
    also a graph input stays outside (a caller may override it).
    """
    read_in_body = {name for node in body_nodes for name in names_read(node)}
    read_outside = {name for node in outer_nodes for name in names_read(node)}
    read_outside.update(i.name for i in graph.input)
    moving = [init for init in graph.initializer
              if init.name in read_in_body and init.name not in read_outside]
    if moving:
        moved = {init.name for init in moving}
        kept = [init for init in graph.initializer if init.name not in moved]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return moving


@dataclass
class _State:
    """The Loop's share of one classification output: two float accumulators."""

    head: list[onnx.NodeProto]  # their initial zeros
    initial: list[str]
    body: list[onnx.NodeProto]
    body_inputs: list[onnx.ValueInfoProto]
    body_outputs: list[onnx.ValueInfoProto]
    finals: list[str]  # the sums after the loop: probabilities, entropies


def _classification_state(prepared: PreparedSource, output: SampledOutput, sample: str,
                          rank: int | None, consts: classification.Constants, fresh: NameMaker,
                          sample_axis: str | None = None) -> _State:
    """Sum of the probabilities (rank of ``y``) and of the entropies (one axis fewer).

    ``sample`` is one sample of ``y``, or with ``sample_axis`` k of them stacked on axis 0
    (summed over that axis first)."""
    base = output.source
    h_rank = None if rank is None else rank - 1
    p_zeros, p_node = constant(fresh, f"{base}/mc_zeros_float", FLOAT, [0.0],
                               [] if rank is None else [1] * rank)
    h_zeros, h_node = constant(fresh, f"{base}/mc_zeros_entropy", FLOAT, [0.0],
                               [] if h_rank is None else [1] * h_rank)
    p, nodes = classification.probabilities(sample, prepared.logits, base, fresh)
    h, entropy_nodes = classification.entropy(p, base, consts, fresh)
    if sample_axis is not None:
        p_sum, h_sum = fresh(f"{base}/mc_chunk_sum_p"), fresh(f"{base}/mc_chunk_sum_h")
        entropy_nodes += [
            oh.make_node("ReduceSum", [p, sample_axis], [p_sum], name=p_sum, keepdims=0),
            oh.make_node("ReduceSum", [h, sample_axis], [h_sum], name=h_sum, keepdims=0)]
        p, h = p_sum, h_sum
    names = [fresh(f"{base}/mc_{k}") for k in ("sum_p_in", "sum_h_in", "sum_p_out", "sum_h_out")]
    p_in, h_in, p_out, h_out = names
    body = [*nodes, *entropy_nodes,
            oh.make_node("Add", [p_in, p], [p_out], name=p_out),
            oh.make_node("Add", [h_in, h], [h_out], name=h_out)]
    return _State(
        head=[p_node, h_node], initial=[p_zeros, h_zeros], body=body,
        body_inputs=[_state_info(p_in, rank, FLOAT), _state_info(h_in, h_rank, FLOAT)],
        body_outputs=[_state_info(p_out, rank, FLOAT), _state_info(h_out, h_rank, FLOAT)],
        finals=[fresh(f"{base}/mc_sum_probabilities"), fresh(f"{base}/mc_sum_entropy")])


@dataclass(frozen=True)
class Chunking:
    """The Loop takes ``k`` samples per iteration, folded into the batch (:mod:`.batch`),
    with ``k`` chosen at run time from the batch size B: the largest divisor of N whose
    ``k`` x B rows of ``row_bytes`` fit ``budget`` (at least 1)."""

    batched: Mapping[str, int]  # the folding check's proof: values with the batch at axis 0
    batch_input: str  # a graph input whose axis 0 is the batch
    row_bytes: int  # one row of the largest sampled activation
    budget: int


def divisors(samples: int) -> list[int]:
    """The divisors of ``samples``, ascending (the sample counts an iteration may take)."""
    return [d for d in range(1, samples + 1) if samples % d == 0]


def _samples_per_iteration(samples: int, chunking: Chunking, fresh: NameMaker
                           ) -> tuple[str, str, str, list[onnx.NodeProto]]:
    """``k`` (int64 [1]), ``k`` as a double scalar and the trip count N / k (int64 scalar)."""
    names = [fresh(f"mc/{k_}") for k_ in ("input_shape", "batch", "bytes_per_choice", "fits",
                                           "choices", "per_iteration", "per_iteration_double",
                                           "per_iteration_scalar", "trips_vector", "trips")]
    shape, batch, per_choice, fits, choices, k, k_d, k_scalar, trips_v, trips = names
    found = divisors(samples)
    zero, z_node = constant(fresh, "mc/axis0", INT64, [0])
    one, o_node = constant(fresh, "mc/one_row", INT64, [1])
    # Bytes k x B rows take, for every candidate k, is B times this constant.
    row_bytes, r_node = constant(fresh, "mc/row_bytes_per_choice", INT64,
                                 [d * chunking.row_bytes for d in found])
    limit, b_node = constant(fresh, "mc/budget_plus_one", INT64, [chunking.budget + 1])
    options, d_node = constant(fresh, "mc/divisors", INT64, found)
    n, n_node = constant(fresh, "mc/samples_vector", INT64, [samples])
    scalar, s_node = constant(fresh, "mc/scalar_shape", INT64, [], [0])
    nodes = [z_node, o_node, r_node, b_node, d_node, n_node, s_node,
             oh.make_node("Shape", [chunking.batch_input], [shape], name=shape),
             oh.make_node("Slice", [shape, zero, one], [batch], name=batch),
             oh.make_node("Mul", [batch, row_bytes], [per_choice], name=per_choice),
             oh.make_node("Less", [per_choice, limit], [fits], name=fits),
             oh.make_node("Where", [fits, options, one], [choices], name=choices),
             oh.make_node("ReduceMax", [choices], [k], name=k, keepdims=1),
             oh.make_node("Reshape", [k, scalar], [k_scalar], name=k_scalar),
             oh.make_node("Cast", [k_scalar], [k_d], name=k_d, to=DOUBLE),
             oh.make_node("Div", [n, k], [trips_v], name=trips_v),
             oh.make_node("Reshape", [trips_v, scalar], [trips], name=trips)]
    return k, k_d, trips, nodes


def _welford(base: str, y: str, k: str, fresh: NameMaker
             ) -> tuple[str, str, str, str, list[onnx.NodeProto]]:
    """One sample ``y`` into the running mean and M2 (``k`` the 1-based sample count)."""
    mean_in, m2_in, mean_out, m2_out = (fresh(f"{base}/mc_{k_}") for k_ in
                                        ("mean_in", "m2_in", "mean_out", "m2_out"))
    y_d, delta, step_mean, delta2, product = (fresh(f"{base}/mc_{k_}") for k_ in
                                              ("double", "delta", "step", "delta_new",
                                               "product"))
    return mean_in, m2_in, mean_out, m2_out, [
        oh.make_node("Cast", [y], [y_d], name=y_d, to=DOUBLE),
        oh.make_node("Sub", [y_d, mean_in], [delta], name=delta),
        oh.make_node("Div", [delta, k], [step_mean], name=step_mean),
        oh.make_node("Add", [mean_in, step_mean], [mean_out], name=mean_out),
        oh.make_node("Sub", [y_d, mean_out], [delta2], name=delta2),
        oh.make_node("Mul", [delta, delta2], [product], name=product),
        oh.make_node("Add", [m2_in, product], [m2_out], name=m2_out),
    ]


@dataclass(frozen=True)
class _ChunkWeights:
    """Per-iteration scalars of the merge, shared by every output: ``k / (n + k)`` and
    ``n * k / (n + k)`` with ``n`` the samples merged before this iteration."""

    share: str
    cross: str


def _chunk_weights(k_d: str, iteration: str, fresh: NameMaker
                   ) -> tuple[_ChunkWeights, list[onnx.NodeProto]]:
    index_d, seen, after, share, cross = (fresh(f"mc/{k_}") for k_ in (
        "iteration_double", "seen", "count_after", "chunk_share", "cross_weight"))
    return _ChunkWeights(share, cross), [
        oh.make_node("Cast", [iteration], [index_d], name=index_d, to=DOUBLE),
        oh.make_node("Mul", [index_d, k_d], [seen], name=seen),
        oh.make_node("Add", [seen, k_d], [after], name=after),
        oh.make_node("Div", [k_d, after], [share], name=share),
        oh.make_node("Mul", [seen, share], [cross], name=cross)]


def _merge(base: str, stacked_d: str, axis0: str, k_d: str, weights: _ChunkWeights,
           fresh: NameMaker) -> tuple[str, str, str, str, list[onnx.NodeProto]]:
    """k samples ``stacked_d`` ([k, B, ...], double) into the running mean and M2 (Chan et
    al.'s pairwise update: the chunk's own mean and M2, two passes, then the merge)."""
    mean_in, m2_in, mean_out, m2_out = (fresh(f"{base}/mc_{k_}") for k_ in
                                        ("mean_in", "m2_in", "mean_out", "m2_out"))
    delta, shift, delta_sq, cross, m2_sum = (fresh(f"{base}/mc_{k_}") for k_ in (
        "delta", "shift", "delta_square", "cross", "m2_sum"))
    mean_c, m2_c, moments = mean_and_m2(base, stacked_d, axis0, k_d, fresh, (
        "chunk_sum", "chunk_mean", "chunk_deviation", "chunk_square", "chunk_m2"))
    return mean_in, m2_in, mean_out, m2_out, [
        *moments,
        oh.make_node("Sub", [mean_c, mean_in], [delta], name=delta),
        oh.make_node("Mul", [delta, weights.share], [shift], name=shift),
        oh.make_node("Add", [mean_in, shift], [mean_out], name=mean_out),
        oh.make_node("Mul", [delta, delta], [delta_sq], name=delta_sq),
        oh.make_node("Mul", [delta_sq, weights.cross], [cross], name=cross),
        oh.make_node("Add", [m2_in, m2_c], [m2_sum], name=m2_sum),
        oh.make_node("Add", [m2_sum, cross], [m2_out], name=m2_out),
    ]


def build_loop(prepared: PreparedSource, samples: int, keep_samples: bool,
               chunking: Chunking | None = None) -> onnx.ModelProto:
    """The Monte-Carlo model as a Loop (``prepared.model`` is changed and returned).

    With ``chunking``, each iteration runs the folded stochastic part on k copies of the
    batch (k chosen at run time, see :class:`Chunking`); without, one sample per iteration.
    """
    model, fresh = prepared.model, prepared.fresh
    graph = model.graph
    # The deterministic prefix (the switch's Constant included) runs once, outside: the
    # body reads its values from the outer scope.
    n_samples, n_node = constant(fresh, "mc/samples", INT64, [samples], [])
    n_double, d_node = constant(fresh, "mc/samples_double", DOUBLE, [float(samples)], [])
    cond, c_node = constant(fresh, "mc/run", BOOL, [True], [])
    iteration, cond_in, cond_out = fresh("mc/iteration"), fresh("mc/cond_in"), fresh("mc/cond")
    if chunking is None:
        split = partition(model)
        nodes = list(graph.node)
        outer = [nodes[i] for i in split.deterministic]
        inner = [nodes[i] for i in split.stochastic]
        mapping: dict[str, str] = {}
        one, o_node = constant(fresh, "mc/one", INT64, [1], [])
        trips, head = n_samples, [*outer, n_node, d_node, c_node, o_node]
        step, k = fresh("mc/step"), fresh("mc/k")
        counting = [oh.make_node("Add", [iteration, one], [step], name=step),
                    oh.make_node("Cast", [step], [k], name=k, to=DOUBLE)]
    else:
        parts = fold(prepared, chunking.batched)
        inner, mapping = parts.folded, parts.mapping
        k, k_d, trips, chunk_nodes = _samples_per_iteration(samples, chunking, fresh)
        head = [*parts.prefix, n_node, d_node, c_node, *chunk_nodes]
        for name, tiled in parts.tiles.items():  # repeated once, read by every iteration
            head += tile(name, tiled, k, chunking.batched.get(name), fresh)
        axis0, a_node = constant(fresh, "mc/sample_axis", INT64, [0])
        head.append(a_node)
        weights, counting = _chunk_weights(k_d, iteration, fresh)
        keep_prefix_value_info(graph, parts.prefix)
    inner_values = {o for n in inner for o in n.output}

    body_nodes = [*inner, *counting,
                  oh.make_node("Identity", [cond_in], [cond_out], name=cond_out)]
    body_inputs = [oh.make_tensor_value_info(iteration, INT64, []),
                   oh.make_tensor_value_info(cond_in, BOOL, [])]
    body_outputs = [oh.make_tensor_value_info(cond_out, BOOL, [])]
    loop_inputs = [trips, cond]
    loop_states, loop_scans, finals = [], [], []
    scan_outputs = []
    consts = None
    if any(o.classification for o in prepared.outputs):
        consts, nodes_ = classification.constants(fresh, samples)
        head += nodes_
    for output in prepared.outputs:
        base, rank = output.source, _rank(output)
        init, i_node = constant(fresh, f"{base}/mc_zeros", DOUBLE, [0.0],
                                [] if rank is None else [1] * rank)
        head.append(i_node)
        y = mapping.get(output.value, output.value)
        if chunking is None:
            sample = y
            mean_in, m2_in, mean_out, m2_out, update = _welford(base, y, k, fresh)
        else:
            sample, before, stack_nodes = stacked_samples(output, y, k, fresh)
            head += before
            stacked_d = fresh(f"{base}/mc_stacked_double")
            mean_in, m2_in, mean_out, m2_out, update = _merge(base, stacked_d, axis0, k_d,
                                                              weights, fresh)
            update = [*stack_nodes,
                      oh.make_node("Cast", [sample], [stacked_d], name=stacked_d, to=DOUBLE),
                      *update]
        body_nodes += update
        body_inputs += [_state_info(mean_in, rank), _state_info(m2_in, rank)]
        body_outputs += [_state_info(mean_out, rank), _state_info(m2_out, rank)]
        loop_inputs += [init, init]
        mean_final, m2_final = fresh(f"{base}/mc_mean_double"), fresh(f"{base}/mc_m2")
        loop_states += [mean_final, m2_final]
        variance, std_d = fresh(f"{base}/mc_variance"), fresh(f"{base}/mc_std_double")
        finals += [
            oh.make_node("Div", [m2_final, n_double], [variance], name=variance),
            oh.make_node("Sqrt", [variance], [std_d], name=std_d),
            cast_to(mean_final, output.elem_type, output.mean, output.mean),
            cast_to(std_d, output.elem_type, output.std, output.std),
        ]
        if output.classification and consts is not None:
            state = _classification_state(prepared, output, sample, rank, consts, fresh,
                                          None if chunking is None else axis0)
            head += state.head
            body_nodes += state.body
            body_inputs += state.body_inputs
            body_outputs += state.body_outputs
            loop_inputs += state.initial
            loop_states += state.finals
            finals += classification.statistics(output, *state.finals, consts, fresh)
        if keep_samples:
            kept = fresh(f"{base}/mc_sample")
            body_nodes.append(oh.make_node("Identity", [sample], [kept], name=kept))
            scan = onnx.ValueInfoProto()
            scan.CopyFrom(output.info)
            scan.name = kept
            if chunking is not None:
                scan.type.tensor_type.ClearField("shape")  # [k, B, ...]: k is decided at run time
            scan_outputs.append(scan)
            if chunking is None:
                loop_scans.append(output.samples)
            else:
                chunks = fresh(f"{base}/mc_chunks")
                loop_scans.append(chunks)
                finals += _unchunked(base, chunks, mean_final, samples, output.samples, fresh)
    body_outputs += scan_outputs
    body_info = [] if chunking is not None else \
        [i for i in graph.value_info if i.name in inner_values]
    body = oh.make_graph(body_nodes, "monte_carlo_sample", body_inputs, body_outputs,
                         initializer=_take_body_only_initializers(graph, body_nodes,
                                                                  [*head, *finals]),
                         value_info=body_info)
    outer_info = [i for i in graph.value_info if i.name not in inner_values]
    loop_name = fresh("mc/loop")
    loop = oh.make_node("Loop", loop_inputs, [*loop_states, *loop_scans], name=loop_name,
                        body=body)
    del graph.value_info[:]
    graph.value_info.extend(outer_info)
    if chunking is not None:
        del graph.input[:]
        graph.input.extend(prepared.inputs)
    del graph.node[:]
    graph.node.extend([*head, loop, *finals])
    del graph.output[:]
    for output in prepared.outputs:
        graph.output.extend(output_infos(output, samples, keep_samples))
    return model


def _unchunked(base: str, chunks: str, mean: str, samples: int, out: str,
               fresh: NameMaker) -> list[onnx.NodeProto]:
    """The Loop's [N/k, k, B, ...] samples as [N, B, ...] (the mean's shape gives B, ...:
    onnx.reference, which joins scan outputs along axis 0, then needs no other reshape)."""
    n, n_node = constant(fresh, f"{base}/mc_samples_vector", INT64, [samples])
    shape, target = fresh(f"{base}/mc_sample_shape"), fresh(f"{base}/mc_samples_shape")
    return [n_node,
            oh.make_node("Shape", [mean], [shape], name=shape),
            oh.make_node("Concat", [n, shape], [target], name=target, axis=0),
            oh.make_node("Reshape", [chunks, target], [out], name=out)]
